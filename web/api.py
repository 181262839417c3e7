"""The radiologists' JSON API: the worklist, a study, and what they do to a study.

Every route needs a token (``web.auth``): the worklist and studies the radiologist role;
``/api/me`` and ``/api/status`` (what decides new studies, for the pages' banner) any role.
Opening a study is audited (DICOM 110103, once per person and study in ten minutes); each
action is audited with what it changed.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from sqlalchemy.orm import Session

from governance import actions
from governance import worklist as worklist_reads
from governance.db import Store
from governance.models import Role
from governance.tokens import Identity
from web.auth import RequireRole, client_address
from web.deps import StoreDep, read_store
from web.schemas import (
    STUDY_STATUSES,
    ClearOverrideIn,
    ErrorOut,
    FinalReadIn,
    MeOut,
    OverrideIn,
    StatusOut,
    StudyDetail,
    WorklistEntry,
)

logger = logging.getLogger(__name__)

MAX_LIMIT = 5000

REFUSALS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "No token, or one that is unknown or revoked."},
    403: {"model": ErrorOut, "description": "The token's role may not do this."},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "No study with this UID."}
}

router = APIRouter(prefix="/api", tags=["radiologist"], responses=REFUSALS)

Radiologist = Annotated[Identity, Depends(RequireRole(Role.RADIOLOGIST))]
AnyRole = Annotated[Identity, Depends(RequireRole(*Role.ALL))]
StudyUid = Annotated[str, Path(description="Study Instance UID")]


@router.get("/me", response_model=MeOut, summary="Who this token belongs to, and its role")
def get_me(identity: AnyRole) -> dict[str, Any]:
    return {"name": identity.name, "role": identity.role, "token_prefix": identity.token_prefix}


@router.get(
    "/status",
    response_model=StatusOut,
    summary="The active model and policy in force, and whether either changed recently",
)
def get_status(
    store: StoreDep,
    _identity: AnyRole,
    recent_hours: Annotated[
        int, Query(ge=1, le=24 * 30, description="A change within this many hours is recent.")
    ] = 24,
) -> dict[str, Any]:
    return read_store(
        store, lambda session: worklist_reads.serving_status(session, recent_hours=recent_hours)
    )


@router.get(
    "/worklist",
    response_model=list[WorklistEntry],
    summary="Studies to read: priority first (a person's override, else the model's flag) by "
    "score, then oldest first",
)
def get_worklist(
    store: StoreDep,
    _identity: Radiologist,
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


def note_viewed(store: Store, request: Request, identity: Identity, uid: str, via: str) -> None:
    """Audit that a person opened a study, unless they did within the last ten minutes."""
    if read_store(
        store, lambda session: actions.viewed_recently(session, uid, actor=identity.name)
    ):
        return
    address = client_address(request)
    store.run(
        lambda session: actions.record_study_viewed(
            session, uid, actor=identity.name, actor_address=address, via=via
        )
    )


@router.get(
    "/studies/{study_instance_uid}",
    response_model=StudyDetail,
    responses=NOT_FOUND,
    summary="One study: result, per-image scores or skip reasons, stage timestamps, actions",
)
def get_study(
    request: Request, store: StoreDep, identity: Radiologist, study_instance_uid: StudyUid
) -> dict[str, Any]:
    detail = read_store(
        store, lambda session: worklist_reads.study_detail(session, study_instance_uid)
    )
    note_viewed(store, request, identity, study_instance_uid, "api")
    return detail


def _act(
    store: Store, uid: str, action: Callable[[Session], actions.ActionResult]
) -> dict[str, Any]:
    def work(session: Session) -> dict[str, Any]:
        try:
            action(session)
        except (ValueError, TypeError) as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        return worklist_reads.worklist_entry(session, uid)

    return store.run(work)


@router.post(
    "/studies/{study_instance_uid}/acknowledge",
    response_model=WorklistEntry,
    responses=NOT_FOUND,
    summary="Acknowledge a study (the first acknowledgement stands)",
)
def acknowledge(
    request: Request, store: StoreDep, identity: Radiologist, study_instance_uid: StudyUid
) -> dict[str, Any]:
    address = client_address(request)
    return _act(
        store,
        study_instance_uid,
        lambda s: actions.acknowledge(
            s, study_instance_uid, actor=identity.name, actor_address=address
        ),
    )


@router.post(
    "/studies/{study_instance_uid}/override",
    response_model=WorklistEntry,
    responses=NOT_FOUND,
    summary="Set a study's priority (upwards or downwards) with a reason; triage never changes it",
)
def override(
    request: Request,
    store: StoreDep,
    identity: Radiologist,
    study_instance_uid: StudyUid,
    body: OverrideIn,
) -> dict[str, Any]:
    address = client_address(request)
    return _act(
        store,
        study_instance_uid,
        lambda s: actions.override(
            s,
            study_instance_uid,
            priority=body.priority,
            reason=body.reason,
            actor=identity.name,
            actor_address=address,
        ),
    )


@router.post(
    "/studies/{study_instance_uid}/override/clear",
    response_model=WorklistEntry,
    responses=NOT_FOUND,
    summary="Hand a study's priority back to the model's flag, with a reason",
)
def clear_override(
    request: Request,
    store: StoreDep,
    identity: Radiologist,
    study_instance_uid: StudyUid,
    body: ClearOverrideIn,
) -> dict[str, Any]:
    address = client_address(request)
    return _act(
        store,
        study_instance_uid,
        lambda s: actions.clear_override(
            s, study_instance_uid, reason=body.reason, actor=identity.name, actor_address=address
        ),
    )


@router.post(
    "/studies/{study_instance_uid}/final-read",
    response_model=WorklistEntry,
    responses=NOT_FOUND,
    summary="Record the final read (pneumonia yes/no): the ground truth monitoring uses",
)
def final_read(
    request: Request,
    store: StoreDep,
    identity: Radiologist,
    study_instance_uid: StudyUid,
    body: FinalReadIn,
) -> dict[str, Any]:
    address = client_address(request)
    return _act(
        store,
        study_instance_uid,
        lambda s: actions.record_final_read(
            s,
            study_instance_uid,
            pneumonia=body.pneumonia,
            actor=identity.name,
            actor_address=address,
        ),
    )
