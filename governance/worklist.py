"""Read models for the radiologist worklist and the study page."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from typing import Any

from sqlalchemy import case, select
from sqlalchemy.orm import Session, selectinload

from governance.errors import NotFound
from governance.models import (
    ImageInference,
    Instance,
    ModelVersion,
    Study,
    StudyInference,
    ThresholdPolicy,
)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


def worklist(
    session: Session,
    *,
    limit: int = 500,
    statuses: Collection[str] | None = None,
    received_after: dt.datetime | None = None,
) -> list[dict[str, Any]]:
    """Studies for the worklist: flagged first by score (highest first), then oldest first.

    Parameters
    ----------
    limit
        Most rows returned (at least 1).
    statuses
        Keep only studies in these states (``StudyStatus`` values); None keeps every study.
    received_after
        Keep only studies whose first instance arrived at or after this time (timezone-aware);
        None keeps every study.

    Raises
    ------
    ValueError
        ``limit`` is not positive, or ``received_after`` is naive.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if received_after is not None and received_after.tzinfo is None:
        raise ValueError("received_after must be timezone-aware (UTC)")
    flagged = case((StudyInference.flagged.is_(True), 0), else_=1)
    query = (
        select(Study, StudyInference, ModelVersion.version, ThresholdPolicy.operating_point)
        .outerjoin(StudyInference, Study.result_id == StudyInference.id)
        .outerjoin(ModelVersion, StudyInference.model_version_id == ModelVersion.id)
        .outerjoin(ThresholdPolicy, StudyInference.policy_id == ThresholdPolicy.id)
        .order_by(
            flagged,
            case((StudyInference.flagged.is_(True), -StudyInference.probability), else_=0),
            Study.first_received_at,
            Study.id,
        )
        .limit(limit)
    )
    if statuses is not None:
        query = query.where(Study.status.in_(list(statuses)))
    if received_after is not None:
        query = query.where(Study.first_received_at >= received_after)
    rows = []
    for study, result, version, operating_point in session.execute(query):
        rows.append(
            {
                "study_instance_uid": study.study_instance_uid,
                "flagged": bool(result.flagged) if result else False,
                "score": result.probability if result else None,
                "tau": result.tau if result else None,
                "model_version": version,
                "policy_version": result.policy_version if result else None,
                "operating_point": operating_point,
                "status": study.status,
                "received_at": _iso(study.first_received_at),
                "last_received_at": _iso(study.last_received_at),
                "queued_at": _iso(study.queued_at),
                "triaged_at": _iso(study.triaged_at),
            }
        )
    return rows


def study_detail(session: Session, study_uid: str) -> dict[str, Any]:
    """One study: its current result, every image's score or skip reason, stage timestamps."""
    study = session.scalar(
        select(Study)
        .where(Study.study_instance_uid == study_uid)
        .options(selectinload(Study.instances))
    )
    if study is None:
        raise NotFound(f"no study {study_uid}")
    result = session.get(StudyInference, study.result_id) if study.result_id else None
    model = session.get(ModelVersion, result.model_version_id) if result else None
    policy = session.get(ThresholdPolicy, result.policy_id) if result and result.policy_id else None
    inferences: dict[int, ImageInference] = {}
    if result is not None:
        for inference in session.scalars(
            select(ImageInference).where(
                ImageInference.model_version_id == result.model_version_id,
                ImageInference.instance_id.in_([i.id for i in study.instances]),
            )
        ):
            inferences[inference.instance_id] = inference
    images = [_image(instance, inferences.get(instance.id)) for instance in study.instances]
    return {
        "study_instance_uid": study.study_instance_uid,
        "status": study.status,
        "status_detail": study.status_detail,
        "flagged": bool(result.flagged) if result else False,
        "score": result.probability if result else None,
        "logit": result.logit if result else None,
        "tau": result.tau if result else None,
        "model_version": model.version if model else None,
        "model_sha256": result.model_sha256 if result else None,
        "policy_version": result.policy_version if result else None,
        "operating_point": policy.operating_point if policy else None,
        "images_scored": result.images_scored if result else 0,
        "images_skipped": result.images_skipped if result else 0,
        "patient_sex": study.patient_sex,
        "patient_age_years": study.patient_age_years,
        "timestamps": {
            "first_received_at": _iso(study.first_received_at),
            "last_received_at": _iso(study.last_received_at),
            "queued_at": _iso(study.queued_at),
            "started_at": _iso(result.started_at) if result else None,
            "finished_at": _iso(result.finished_at) if result else None,
            "triaged_at": _iso(study.triaged_at),
        },
        "images": images,
    }


def _image(instance: Instance, inference: ImageInference | None) -> dict[str, Any]:
    return {
        "sop_instance_uid": instance.sop_instance_uid,
        "series_instance_uid": instance.series_instance_uid,
        "sop_class_uid": instance.sop_class_uid,
        "transfer_syntax_uid": instance.transfer_syntax_uid,
        "modality": instance.modality,
        "view_position": instance.view_position,
        "body_part": instance.body_part,
        "received_at": _iso(instance.received_at),
        "calling_ae": instance.calling_ae,
        "probability": inference.probability if inference else None,
        "logit": inference.logit if inference else None,
        "skipped_reason": inference.skipped_reason if inference else None,
        "scored": bool(inference and inference.probability is not None),
        "timestamps": {
            "started_at": _iso(inference.started_at) if inference else None,
            "decoded_at": _iso(inference.decoded_at) if inference else None,
            "preprocessed_at": _iso(inference.preprocessed_at) if inference else None,
            "inferred_at": _iso(inference.inferred_at) if inference else None,
        },
    }
