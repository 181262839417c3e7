"""Triage of one study: select frontal images, preprocess, score, compare with tau, persist.

The steps that touch the store are short transactions around the slow part (decode and
inference), so the embedded SQLite store is never locked while the model runs. The result,
the per-image inferences and the audit events are written in one transaction.

Idempotent on (study, model version): an image already scored by the active version is not
scored again, and a redelivered task with nothing new changes nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from governance import audit
from governance.db import Store
from governance.errors import NotFound
from governance.events import emit_study_triaged
from governance.models import (
    ImageInference,
    Instance,
    Study,
    StudyInference,
    StudyStatus,
    utcnow,
)
from governance.policies import policy_in_force
from governance.registry import active_model
from worker.inference import ModelCache, ModelSpec, calibrate, predict_logits
from worker.preprocess import decode, pixel_transform, standardize, to_unit_image
from worker.selection import skip_reason

logger = logging.getLogger(__name__)

ACTOR = "cxr-triage-worker"


@dataclass(frozen=True, slots=True)
class ImageResult:
    instance_id: int
    sop_instance_uid: str
    started_at: dt.datetime
    probability: float | None = None
    logit: float | None = None
    skipped_reason: str | None = None
    decoded_at: dt.datetime | None = None
    preprocessed_at: dt.datetime | None = None
    inferred_at: dt.datetime | None = None


@dataclass
class TriageOutcome:
    study_instance_uid: str
    status: str
    model_version: str | None = None
    probability: float | None = None
    tau: float | None = None
    flagged: bool = False
    images_scored: int = 0
    images_skipped: int = 0
    newly_scored: int = 0
    detail: str | None = None
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Plan:
    study_id: int
    spec: ModelSpec | None
    model_id: int | None
    todo: list[tuple[int, str, str]]  # (instance id, SOP Instance UID, path)


def _plan(session: Session, study_uid: str) -> _Plan:
    study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
    if study is None:
        raise NotFound(f"no study {study_uid} in the store")
    model = active_model(session)
    if model is None:
        return _Plan(study.id, None, None, [])
    done = set(
        session.scalars(
            select(ImageInference.instance_id)
            .join(Instance, Instance.id == ImageInference.instance_id)
            .where(Instance.study_id == study.id, ImageInference.model_version_id == model.id)
        )
    )
    todo = [
        (instance.id, instance.sop_instance_uid, instance.path)
        for instance in session.scalars(
            select(Instance).where(Instance.study_id == study.id).order_by(Instance.id)
        )
        if instance.id not in done
    ]
    spec = ModelSpec.of(model)
    return _Plan(study.id, spec, model.id, todo)


def _prepare_image(
    instance_id: int, sop_uid: str, path: str, size: int
) -> tuple[ImageResult, np.ndarray | None]:
    """Read, select and preprocess one image; a failure becomes a skip reason, not an error."""
    started = utcnow()
    try:
        ds = pydicom.dcmread(path)
    except FileNotFoundError:
        return ImageResult(
            instance_id, sop_uid, started, skipped_reason="file missing from spool"
        ), None
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        logger.warning("instance %s unreadable: %s", sop_uid, type(exc).__name__)
        return ImageResult(
            instance_id, sop_uid, started, skipped_reason="unreadable DICOM file"
        ), None
    if "SOPClassUID" not in ds and "PixelData" not in ds:
        return ImageResult(
            instance_id, sop_uid, started, skipped_reason="unreadable DICOM file"
        ), None
    reason = skip_reason(ds)
    if reason is not None:
        return ImageResult(instance_id, sop_uid, started, skipped_reason=reason), None
    try:
        transform = pixel_transform(ds)
        pixels = decode(ds)
        decoded = utcnow()
        tensor = standardize(to_unit_image(pixels, transform, size))
    except (ValueError, RuntimeError) as exc:
        logger.warning("instance %s not decodable: %s", sop_uid, exc)
        return ImageResult(instance_id, sop_uid, started, skipped_reason=str(exc)[:250]), None
    return ImageResult(
        instance_id, sop_uid, started, decoded_at=decoded, preprocessed_at=utcnow()
    ), tensor


def score_images(
    models: ModelCache, spec: ModelSpec, todo: list[tuple[int, str, str]], *, batch_size: int = 8
) -> list[ImageResult]:
    """Preprocess and score images in batches; skipped ones carry their reason."""
    results: list[ImageResult] = []
    pending: list[tuple[ImageResult, np.ndarray]] = []

    def flush() -> None:
        if not pending:
            return
        loaded = models.get(spec)
        logits = predict_logits(loaded, np.stack([tensor for _, tensor in pending]))
        probabilities = calibrate(logits, spec.temperature)
        inferred = utcnow()
        for (partial, _), logit, probability in zip(pending, logits, probabilities, strict=True):
            results.append(
                _replace(
                    partial,
                    logit=float(logit),
                    probability=float(probability),
                    inferred_at=inferred,
                )
            )
        pending.clear()

    for instance_id, sop_uid, path in todo:
        partial, tensor = _prepare_image(instance_id, sop_uid, path, spec.input_size)
        if tensor is None:
            results.append(partial)
            continue
        pending.append((partial, tensor))
        if len(pending) >= batch_size:
            flush()
    flush()
    return results


def _replace(result: ImageResult, **changes: object) -> ImageResult:
    values = {name: getattr(result, name) for name in ImageResult.__slots__}
    values.update(changes)
    return ImageResult(**values)  # type: ignore[arg-type]


def _persist(
    session: Session,
    plan: _Plan,
    spec: ModelSpec,
    results: list[ImageResult],
    started: dt.datetime,
) -> TriageOutcome:
    assert plan.model_id is not None
    study = session.get(Study, plan.study_id)
    if study is None:
        raise NotFound("study vanished during triage")
    existing = set(
        session.scalars(
            select(ImageInference.instance_id).where(
                ImageInference.model_version_id == plan.model_id,
                ImageInference.instance_id.in_([r.instance_id for r in results]),
            )
        )
    )
    for r in results:
        if r.instance_id in existing:
            continue  # a concurrent run of the same study got there first
        session.add(
            ImageInference(
                instance_id=r.instance_id,
                model_version_id=plan.model_id,
                model_sha256=spec.sha256,
                probability=r.probability,
                logit=r.logit,
                skipped_reason=r.skipped_reason,
                started_at=r.started_at,
                decoded_at=r.decoded_at,
                preprocessed_at=r.preprocessed_at,
                inferred_at=r.inferred_at,
            )
        )
    session.flush()
    rows = session.execute(
        select(
            ImageInference.probability,
            ImageInference.logit,
            Instance.sop_instance_uid,
            ImageInference.skipped_reason,
        )
        .join(Instance, Instance.id == ImageInference.instance_id)
        .where(Instance.study_id == study.id, ImageInference.model_version_id == plan.model_id)
    ).all()
    scored = [(p, lg) for p, lg, _, _ in rows if p is not None]
    skipped = {uid: reason for p, _, uid, reason in rows if p is None and reason}
    policy = policy_in_force(session, plan.model_id)
    now = utcnow()
    best = max(scored, key=lambda pair: pair[0]) if scored else None
    probability = best[0] if best else None
    tau = policy.tau if policy else None
    flagged = bool(probability is not None and tau is not None and probability >= tau)
    result = session.scalar(
        select(StudyInference).where(
            StudyInference.study_id == study.id, StudyInference.model_version_id == plan.model_id
        )
    )
    was_flagged = bool(result and result.flagged)
    if result is None:
        result = StudyInference(study_id=study.id, model_version_id=plan.model_id, runs=0)
        session.add(result)
    result.model_sha256 = spec.sha256
    result.policy_id = policy.id if policy else None
    result.policy_version = policy.version if policy else None
    result.tau = tau
    result.probability = probability
    result.logit = best[1] if best else None
    result.flagged = flagged
    result.images_scored = len(scored)
    result.images_skipped = len(skipped)
    result.queued_at = study.queued_at
    result.started_at = started
    result.finished_at = now
    result.runs = (result.runs or 0) + 1
    session.flush()
    study.result_id = result.id
    study.status = StudyStatus.TRIAGED if scored else StudyStatus.NO_FRONTAL
    study.status_detail = None if scored else "no frontal chest radiograph to score"
    study.triaged_at = now
    study.reconcile_attempts = 0
    detail = {
        "model_version": spec.version,
        "model_sha256": spec.sha256,
        "policy_version": result.policy_version,
        "tau": tau,
        "probability": probability,
        "flagged": flagged,
        "images_scored": len(scored),
        "images_skipped": len(skipped),
    }
    audit.record(
        session,
        actor=ACTOR,
        action=audit.Action.STUDY_TRIAGED,
        object_type="study",
        object_uid=study.study_instance_uid,
        detail=detail,
    )
    emit_study_triaged(
        session,
        study_id=study.id,
        study_instance_uid=study.study_instance_uid,
        status=study.status,
        model_version_id=plan.model_id,
        model_version=spec.version,
        study_inference_id=result.id,
        probability=probability,
        tau=tau,
        policy_version=result.policy_version,
        flagged=flagged,
        previously_flagged=was_flagged,
    )
    if flagged and not was_flagged:
        audit.record(
            session,
            actor=ACTOR,
            action=audit.Action.STUDY_FLAGGED,
            object_type="study",
            object_uid=study.study_instance_uid,
            detail=detail,
        )
    return TriageOutcome(
        study_instance_uid=study.study_instance_uid,
        status=study.status,
        model_version=spec.version,
        probability=probability,
        tau=tau,
        flagged=flagged,
        images_scored=len(scored),
        images_skipped=len(skipped),
        newly_scored=sum(1 for r in results if r.probability is not None),
        skipped=skipped,
    )


def _set_status(store: Store, study_id: int, status: str, detail: str | None) -> None:
    def work(session: Session) -> None:
        study = session.get(Study, study_id)
        if study is not None:
            study.status = status
            study.status_detail = detail

    store.run(work)


def triage_study(
    store: Store, models: ModelCache, study_uid: str, *, batch_size: int = 8
) -> TriageOutcome:
    """Triage one study with the active model version and the policy in force.

    Raises
    ------
    NotFound
        The study is not in the store.
    StoreUnavailable
        The store could not be reached (the caller retries the task).
    ModelIntegrityError
        The active model's file is missing or its checksum differs.
    """
    started = utcnow()
    with store.read() as session:
        plan = _plan(session, study_uid)
    if plan.spec is None:
        _set_status(
            store,
            plan.study_id,
            StudyStatus.NO_MODEL,
            "no active model version; activate one with `cxr-triage model activate`",
        )
        logger.warning("study %s: no active model version", study_uid)
        return TriageOutcome(study_uid, StudyStatus.NO_MODEL, detail="no active model version")
    if not plan.todo:
        with store.read() as session:
            existing = session.scalar(
                select(StudyInference).where(
                    StudyInference.study_id == plan.study_id,
                    StudyInference.model_version_id == plan.model_id,
                )
            )
            if existing is not None:
                logger.info("study %s: nothing new for model %s", study_uid, plan.spec.version)
                # A resent instance or a duplicate message set it queued: it is up to date.
                _set_status(
                    store,
                    plan.study_id,
                    StudyStatus.TRIAGED if existing.images_scored else StudyStatus.NO_FRONTAL,
                    None if existing.images_scored else "no frontal chest radiograph to score",
                )
                return TriageOutcome(
                    study_uid,
                    StudyStatus.TRIAGED if existing.images_scored else StudyStatus.NO_FRONTAL,
                    plan.spec.version,
                    existing.probability,
                    existing.tau,
                    existing.flagged,
                    existing.images_scored,
                    existing.images_skipped,
                )
    _set_status(store, plan.study_id, StudyStatus.TRIAGING, None)
    results = score_images(models, plan.spec, plan.todo, batch_size=batch_size)
    spec = plan.spec
    for attempt in (1, 2):
        try:
            outcome = store.run(lambda session: _persist(session, plan, spec, results, started))
            break
        except IntegrityError:
            if attempt == 2:
                raise
            logger.info("study %s: concurrent triage, merging", study_uid)
    logger.info(
        "study %s: %s p=%s tau=%s flagged=%s (%d scored, %d skipped, model %s)",
        study_uid,
        outcome.status,
        f"{outcome.probability:.4f}" if outcome.probability is not None else "-",
        outcome.tau,
        outcome.flagged,
        outcome.images_scored,
        outcome.images_skipped,
        spec.version,
    )
    return outcome
