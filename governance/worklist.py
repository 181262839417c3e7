"""Read models for the radiologist worklist and the study page."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from typing import Any

from sqlalchemy import Select, and_, case, func, select
from sqlalchemy.orm import Session, selectinload

from governance.actions import Priority, effective_priority
from governance.errors import NotFound
from governance.models import (
    ImageInference,
    Instance,
    ModelVersion,
    Study,
    StudyInference,
    ThresholdPolicy,
    utcnow,
)
from governance.policies import policy_in_force
from governance.registry import active_model
from governance.studies import find_study


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


def live_flag(result: StudyInference | None) -> bool:
    """The model's flag as the worklist shows it: never one decided under a shadow policy."""
    return bool(result is not None and result.flagged and not result.shadow)


def _people(study: Study, model_flagged: bool) -> dict[str, Any]:
    """What people did to a study, and the priority that results."""
    return {
        "model_flagged": model_flagged,
        "priority": effective_priority(study.priority_override, model_flagged),
        "priority_override": study.priority_override,
        "override_reason": study.override_reason,
        "overridden_by": study.overridden_by,
        "overridden_at": _iso(study.overridden_at),
        "acknowledged_by": study.acknowledged_by,
        "acknowledged_at": _iso(study.acknowledged_at),
        "final_read": study.final_read,
        "final_read_by": study.final_read_by,
        "final_read_at": _iso(study.final_read_at),
    }


def _worklist_query() -> Select[Study, StudyInference, str, str]:
    # Effective priority: a person's override where there is one, else the model's flag.
    is_priority = case(
        (Study.priority_override == Priority.PRIORITY, True),
        (Study.priority_override == Priority.ROUTINE, False),
        # A flag under a shadow policy is never a priority (go-live silent period).
        else_=func.coalesce(and_(StudyInference.flagged, ~StudyInference.shadow), False),
    )
    rank = case((is_priority, 0), else_=1)
    # Priority studies by score, highest first (unscored ones after the scored); others by age.
    score_key = case(
        (is_priority, -func.coalesce(StudyInference.probability, -1.0)),
        else_=0.0,
    )
    return (
        select(Study, StudyInference, ModelVersion.version, ThresholdPolicy.operating_point)
        .outerjoin(StudyInference, Study.result_id == StudyInference.id)
        .outerjoin(ModelVersion, StudyInference.model_version_id == ModelVersion.id)
        .outerjoin(ThresholdPolicy, StudyInference.policy_id == ThresholdPolicy.id)
        .order_by(rank, score_key, Study.first_received_at, Study.id)
    )


def age_band(years: int | None) -> str | None:
    """A decade band (``40-49``; ``90+``) instead of the exact age, for the worklist."""
    if years is None or years < 0:
        return None
    if years >= 90:
        return "90+"
    low = years // 10 * 10
    return f"{low}-{low + 9}"


def _date(value: str | None) -> str | None:
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if value and len(value) == 8 else None


def worklist_fields(study: Study, phi: bool) -> dict[str, Any]:
    """The worklist fields a radiologist finds the study by in the PACS (PHI), or nulls.

    Only where the site keeps them (``CXR_WORKLIST_PHI``); never logged or audited.
    """
    if not phi:
        return {
            "accession_number": None,
            "study_date": None,
            "study_description": None,
            "age_band": None,
            "sex": None,
        }
    return {
        "accession_number": study.accession_number,
        "study_date": _date(study.study_date),
        "study_description": study.study_description,
        "age_band": age_band(study.patient_age_years),
        "sex": study.patient_sex,
    }


def _row(
    study: Study,
    result: StudyInference | None,
    version: str | None,
    operating_point: str | None,
    phi: bool = False,
) -> dict[str, Any]:
    flagged = live_flag(result)
    return {
        **worklist_fields(study, phi),
        "study_instance_uid": study.study_instance_uid,
        "flagged": flagged,
        "shadow_flagged": bool(result and result.flagged and result.shadow),
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
        **_people(study, flagged),
    }


def worklist(
    session: Session,
    *,
    limit: int = 500,
    statuses: Collection[str] | None = None,
    received_after: dt.datetime | None = None,
    phi: bool = False,
) -> list[dict[str, Any]]:
    """Studies for the worklist: effective priority first, by score (highest first), then oldest.

    The effective priority is a person's override where there is one, else the model's flag
    (``flagged`` / ``model_flagged``: the score reached the tau of the policy in force). Each
    row names the model version, policy version, operating point and tau that decided it.

    Parameters
    ----------
    limit
        Most rows returned (at least 1).
    statuses
        Keep only studies in these states (``StudyStatus`` values); None keeps every study.
    received_after
        Keep only studies whose first instance arrived at or after this time (timezone-aware);
        None keeps every study.
    phi
        Fill the worklist fields (accession number, study date and description, age band,
        sex) where the site keeps them (``CXR_WORKLIST_PHI``); nulls otherwise.

    Raises
    ------
    ValueError
        ``limit`` is not positive, or ``received_after`` is naive.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if received_after is not None and received_after.tzinfo is None:
        raise ValueError("received_after must be timezone-aware (UTC)")
    query = _worklist_query().limit(limit)
    if statuses is not None:
        query = query.where(Study.status.in_(list(statuses)))
    if received_after is not None:
        query = query.where(Study.first_received_at >= received_after)
    return [
        _row(study, result, version, point, phi)
        for study, result, version, point in session.execute(query)
    ]


def worklist_entry(session: Session, study_uid: str, *, phi: bool = False) -> dict[str, Any]:
    """One study's worklist row (what an action answers with).

    Raises
    ------
    NotFound
        No study has this UID.
    """
    row = session.execute(_worklist_query().where(Study.study_instance_uid == study_uid)).first()
    if row is None:
        raise NotFound(f"no study {study_uid}")
    study, result, version, point = row
    return _row(study, result, version, point, phi)


def study_detail(session: Session, study_uid: str, *, phi: bool = False) -> dict[str, Any]:
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
    scored = [i for i in images if i["scored"]]
    best = max(scored, key=lambda i: i["probability"]) if scored else None
    return {
        **worklist_fields(study, phi),
        "scored_sop_instance_uid": best["sop_instance_uid"] if best else None,
        "study_instance_uid": study.study_instance_uid,
        "status": study.status,
        "status_detail": study.status_detail,
        "flagged": live_flag(result),
        "shadow_flagged": bool(result and result.flagged and result.shadow),
        "score": result.probability if result else None,
        "logit": result.logit if result else None,
        "tau": result.tau if result else None,
        "model_version": model.version if model else None,
        "model_sha256": result.model_sha256 if result else None,
        "policy_version": result.policy_version if result else None,
        "operating_point": policy.operating_point if policy else None,
        "images_scored": result.images_scored if result else 0,
        "images_skipped": result.images_skipped if result else 0,
        **_people(study, live_flag(result)),
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


def serving_status(
    session: Session, *, now: dt.datetime | None = None, recent_hours: int = 24
) -> dict[str, Any]:
    """The active model and the policy in force for it, and which of them changed recently.

    A change is recent when the model was activated (or rolled back to), or its policy in
    force took effect, within ``recent_hours``: the worklist shows a banner then, because
    flags before and after the change were decided differently.
    """
    when = now or utcnow()
    since = when - dt.timedelta(hours=recent_hours)
    model = active_model(session)
    policy = policy_in_force(session, model.id, at=when) if model else None
    changes: list[dict[str, Any]] = []
    if model is not None and model.activated_at is not None and model.activated_at >= since:
        changes.append(
            {
                "kind": "model",
                "at": model.activated_at,
                "summary": f"model {model.version} became active",
            }
        )
    if policy is not None and policy.effective_from >= since:
        changes.append(
            {
                "kind": "policy",
                "at": policy.effective_from,
                "summary": f"policy v{policy.version} ({policy.operating_point}, "
                f"tau {policy.tau:.3f}) took effect",
            }
        )
    return {
        "active_model": {
            "version": model.version,
            "clinical": model.clinical,
            "activated_at": model.activated_at,
        }
        if model
        else None,
        "policy_in_force": {
            "version": policy.version,
            "operating_point": policy.operating_point,
            "tau": policy.tau,
            "target_metric": policy.target_metric,
            "approved_by": policy.approved_by,
            "effective_from": policy.effective_from,
        }
        if policy
        else None,
        "recent_hours": recent_hours,
        "recent_changes": sorted(changes, key=lambda change: change["at"]),
    }


def scored_image_path(session: Session, study_uid: str) -> str:
    """The spool path of the image that decided the study's score (its highest-scoring one).

    Raises
    ------
    NotFound
        No such study, or it has no scored image.
    """
    study = find_study(session, study_uid)
    result = session.get(StudyInference, study.result_id) if study and study.result_id else None
    if study is None or result is None:
        raise NotFound(f"study {study_uid} has no scored image")
    path = session.scalar(
        select(Instance.path)
        .join(ImageInference, ImageInference.instance_id == Instance.id)
        .where(
            Instance.study_id == study.id,
            ImageInference.model_version_id == result.model_version_id,
            ImageInference.probability.is_not(None),
        )
        .order_by(ImageInference.probability.desc())
        .limit(1)
    )
    if path is None:
        raise NotFound(f"study {study_uid} has no scored image")
    return str(path)
