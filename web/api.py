"""The JSON API: worklist, study results, model versions and threshold policies (read-only)."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from sqlalchemy import select
from sqlalchemy.orm import Session

from governance import worklist as worklist_reads
from governance.db import Store
from governance.models import AuditEvent, ModelVersion, ThresholdPolicy
from governance.policies import list_policies, policy_in_force
from governance.registry import active_model, list_models
from web.deps import get_store, read_store
from web.schemas import (
    STUDY_STATUSES,
    AuditEventOut,
    ErrorOut,
    ModelOut,
    ModelsOut,
    PolicyBrief,
    PolicyOut,
    StudyDetail,
    WorklistEntry,
)

logger = logging.getLogger(__name__)

MAX_LIMIT = 5000

router = APIRouter(prefix="/api", tags=["api"])

StoreDep = Annotated[Store, Depends(get_store)]


@router.get(
    "/worklist",
    response_model=list[WorklistEntry],
    summary="Studies to read: flagged first by score (highest first), then oldest first",
)
def get_worklist(
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Most studies returned.")] = 500,
    status: Annotated[
        list[str] | None,
        Query(
            description=f"Keep only studies in these states ({', '.join(STUDY_STATUSES)}); "
            "repeatable."
        ),
    ] = None,
    received_after: Annotated[
        dt.datetime | None,
        Query(
            description="Only studies first received at or after this time (ISO 8601 with a "
            "zone, e.g. 2026-11-25T08:00:00Z)."
        ),
    ] = None,
) -> list[dict[str, Any]]:
    if received_after is not None and received_after.tzinfo is None:
        raise HTTPException(
            status_code=422, detail="received_after needs a time zone (e.g. a trailing Z)"
        )
    if status:
        unknown = sorted(set(status) - set(STUDY_STATUSES))
        if unknown:
            raise HTTPException(
                status_code=422,
                detail=f"unknown status {', '.join(unknown)}; "
                f"use one of {', '.join(STUDY_STATUSES)}",
            )
    return read_store(
        store,
        lambda session: worklist_reads.worklist(
            session, limit=limit, statuses=status, received_after=received_after
        ),
    )


@router.get(
    "/studies/{study_instance_uid}",
    response_model=StudyDetail,
    responses={404: {"model": ErrorOut, "description": "No study with this UID."}},
    summary="One study: result, per-image scores or skip reasons, stage timestamps",
)
def get_study(
    store: StoreDep,
    study_instance_uid: Annotated[str, Path(description="Study Instance UID")],
) -> dict[str, Any]:
    return read_store(
        store, lambda session: worklist_reads.study_detail(session, study_instance_uid)
    )


def _models(session: Session) -> dict[str, Any]:
    active = active_model(session)
    models = []
    for model in list_models(session):
        policy = policy_in_force(session, model.id)
        models.append(
            ModelOut(
                version=model.version,
                status=model.status,
                clinical=model.clinical,
                sha256=model.sha256,
                architecture=model.architecture,
                input_size=model.input_size,
                temperature=model.temperature,
                description=model.description,
                registered_at=model.registered_at,
                activated_at=model.activated_at,
                policy_in_force=PolicyBrief(
                    version=policy.version,
                    operating_point=policy.operating_point,
                    tau=policy.tau,
                    effective_from=policy.effective_from,
                )
                if policy
                else None,
            )
        )
    return {"active_version": active.version if active else None, "models": models}


@router.get(
    "/models",
    response_model=ModelsOut,
    summary="Registered model versions, their SHA-256 and the active one",
)
def get_models(store: StoreDep) -> dict[str, Any]:
    return read_store(store, _models)


def _policies(session: Session, model_version: str | None) -> list[PolicyOut]:
    versions = dict(session.execute(select(ModelVersion.id, ModelVersion.version)).all())
    model_id = None
    if model_version is not None:
        ids = [key for key, value in versions.items() if value == model_version]
        if not ids:
            return []
        model_id = ids[0]
    in_force: dict[int, int | None] = {}
    out = []
    for policy in list_policies(session, model_id):
        if policy.model_version_id not in in_force:
            current: ThresholdPolicy | None = policy_in_force(session, policy.model_version_id)
            in_force[policy.model_version_id] = current.id if current else None
        out.append(
            PolicyOut(
                model_version=versions[policy.model_version_id],
                version=policy.version,
                operating_point=policy.operating_point,
                tau=policy.tau,
                target_metric=policy.target_metric,
                validation=policy.validation or {},
                rationale=policy.rationale,
                approved_by=policy.approved_by,
                effective_from=policy.effective_from,
                created_at=policy.created_at,
                in_force=in_force[policy.model_version_id] == policy.id,
            )
        )
    return out


@router.get(
    "/policies",
    response_model=list[PolicyOut],
    summary="Threshold policies of every model version (or of one), oldest first",
)
def get_policies(
    store: StoreDep,
    model_version: Annotated[str | None, Query(description="Only this model version's.")] = None,
) -> list[PolicyOut]:
    return read_store(store, lambda session: _policies(session, model_version))


def _audit(
    session: Session, limit: int, action: str | None, object_uid: str | None
) -> list[AuditEventOut]:
    query = select(AuditEvent).order_by(AuditEvent.occurred_at.desc(), AuditEvent.id.desc())
    if action is not None:
        query = query.where(AuditEvent.action == action)
    if object_uid is not None:
        query = query.where(AuditEvent.object_uid == object_uid)
    return [
        AuditEventOut.model_validate(event, from_attributes=True)
        for event in session.scalars(query.limit(limit))
    ]


@router.get(
    "/audit",
    response_model=list[AuditEventOut],
    summary="The audit trail, newest first",
)
def get_audit(
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Most events returned.")] = 100,
    action: Annotated[str | None, Query(description="Only this action.")] = None,
    object_uid: Annotated[
        str | None, Query(description="Only events about this object (a UID or version).")
    ] = None,
) -> list[AuditEventOut]:
    return read_store(store, lambda session: _audit(session, limit, action, object_uid))
