"""Triage of one study: plan, score, hand over to :mod:`governance.triage_results`.

The worker selects frontal images from the store's Instance columns, opens a selected file only
to score it, and hands the scores to :func:`governance.triage_results.record`, which decides,
sets the status and writes the result, the audit events and the "study triaged" event in one
transaction. The store is touched in two short transactions around the slow part (decode and
inference): one that plans and sets the status, one that records; the embedded SQLite store is
never locked while the model runs.

Idempotent on (study, model version): an image already scored by the active version is not
scored again, and a redelivered task with nothing new changes nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from governance import triage_results
from governance.db import Store
from governance.models import StudyStatus, utcnow
from governance.monitoring.features import InputFeatures, header_features
from governance.text import clip
from governance.triage_results import (
    ImageScore,
    PendingImage,
    ScoringModel,
    TriageOutcome,
    TriagePlan,
)
from worker.batcher import Batcher
from worker.inference import ModelCache, ModelSpec, calibrate, predict_logits
from worker.limits import ImageLimits, content_skip_reason, header_skip_reason
from worker.pipeline import DEFAULT_WORKERS, prefetch
from worker.preprocess import Prepared, prepare
from worker.selection import InstanceColumns, header_mismatch, row_skip_reason, skip_reason

logger = logging.getLogger(__name__)

ImageResult = ImageScore  # the name predict and older callers use

#: ImageInference.skipped_reason is String(256).
SKIP_REASON_LIMIT = 256

__all__ = ["Candidate", "ImageResult", "TriageOutcome", "score_images", "triage_study"]


@dataclass(frozen=True, slots=True)
class Candidate:
    """A file to score; ``row`` is its Instance row, whose header it must agree with (or None)."""

    instance_id: int
    sop_instance_uid: str
    path: str
    row: InstanceColumns | None = None


def _read(candidate: Candidate, started: dt.datetime, limits: ImageLimits) -> Dataset | ImageScore:
    """The file's data set, or the reason it is skipped."""

    def skipped(reason: str) -> ImageScore:
        return ImageScore(
            candidate.instance_id, candidate.sop_instance_uid, started, skipped_reason=reason
        )

    try:
        ds = pydicom.dcmread(candidate.path)
    except FileNotFoundError:
        return skipped("file missing from spool")
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        logger.warning("instance %s unreadable: %s", candidate.sop_instance_uid, type(exc).__name__)
        return skipped("unreadable DICOM file")
    if "SOPClassUID" not in ds and "PixelData" not in ds:
        return skipped("unreadable DICOM file")
    reason = header_mismatch(ds, candidate.row) if candidate.row is not None else None
    reason = reason or skip_reason(ds) or header_skip_reason(ds, limits)
    return skipped(clip(reason, SKIP_REASON_LIMIT) or "") if reason is not None else ds


def _features(prepared: Prepared, ds: Dataset) -> InputFeatures:
    """Monitoring's view of an image: the preprocessing entry point's statistics (before
    padding and standardisation) and a few header values read with the pixels."""
    stats = prepared.stats
    header = header_features(ds)
    return InputFeatures(
        img_mean=stats.mean,
        img_std=stats.std,
        img_frac_zero=stats.fraction_at_0,
        img_frac_one=stats.fraction_at_1,
        **header,
    )


def _prepare_image(
    candidate: Candidate, size: int, limits: ImageLimits | None = None
) -> tuple[ImageScore, np.ndarray | None]:
    """Read, check and preprocess one image; a failure becomes a skip reason, not an error.

    The header is checked against ``limits`` before any pixel is decoded; a decoder's own
    error or a MemoryError skips this image only, and an image without content is not scored.
    """
    started = utcnow()
    try:
        return _prepare(candidate, size, limits or ImageLimits(), started)
    except Exception as exc:  # MemoryError, a decoder's own error: this image, not the study
        logger.warning(
            "instance %s not decodable: %s", candidate.sop_instance_uid, type(exc).__name__
        )
        reason = f"cannot decode the image ({type(exc).__name__})"
        return ImageScore(
            candidate.instance_id, candidate.sop_instance_uid, started, skipped_reason=reason
        ), None


def _prepare(
    candidate: Candidate, size: int, limits: ImageLimits, started: dt.datetime
) -> tuple[ImageScore, np.ndarray | None]:
    ds = _read(candidate, started, limits)
    if isinstance(ds, ImageScore):
        return ds, None
    uid = candidate.sop_instance_uid
    try:
        prepared = prepare(ds, size)
    except (ValueError, RuntimeError) as exc:
        logger.warning("instance %s not decodable: %s", uid, clip(exc, 200))
        reason = clip(exc, SKIP_REASON_LIMIT)
        return ImageScore(candidate.instance_id, uid, started, skipped_reason=reason), None
    reason = content_skip_reason(None, prepared.unit, std=prepared.stats.std)
    if reason is not None:
        return ImageScore(candidate.instance_id, uid, started, skipped_reason=reason), None
    score = ImageScore(
        candidate.instance_id,
        uid,
        started,
        decoded_at=prepared.decoded_at,
        preprocessed_at=prepared.preprocessed_at,
        decode_path=prepared.decode_path,
        monitoring=_features(prepared, ds),
    )
    return score, prepared.input


def _score_batch(
    models: ModelCache,
    spec: ModelSpec,
    batch: list[tuple[ImageScore, np.ndarray]],
    batcher: Batcher | None = None,
) -> list[ImageScore]:
    images = np.stack([tensor for _, tensor in batch])
    loaded = models.get(spec)
    # With a batcher, other studies' images share this forward pass (worker.batcher).
    logits = batcher.score(loaded, images) if batcher else predict_logits(loaded, images)
    probabilities = calibrate(logits, spec.temperature)
    inferred = utcnow()
    return [
        dataclasses.replace(
            partial, logit=float(logit), probability=float(probability), inferred_at=inferred
        )
        for (partial, _), logit, probability in zip(batch, logits, probabilities, strict=True)
    ]


def score_images(
    models: ModelCache,
    spec: ModelSpec,
    todo: Sequence[Candidate],
    *,
    batch_size: int = 8,
    workers: int = DEFAULT_WORKERS,
    limits: ImageLimits | None = None,
    batcher: Batcher | None = None,
) -> list[ImageScore]:
    """Preprocess and score images in batches; skipped ones carry their reason.

    ``workers`` threads prepare the next images while the model scores (0: inline); with a
    ``batcher``, the forward passes are shared with the other studies scoring at the time.
    """
    results: list[ImageScore] = []
    pending: list[tuple[ImageScore, np.ndarray]] = []
    size = spec.input_size
    # Read, decode and preprocess up to two batches ahead while the model scores (pipeline.py).
    prepared = prefetch(
        lambda candidate: _prepare_image(candidate, size, limits),
        todo,
        workers=workers,
        depth=2 * max(1, batch_size),
    )
    for partial, tensor in prepared:
        if tensor is None:
            results.append(partial)
            continue
        pending.append((partial, tensor))
        if len(pending) >= batch_size:
            results.extend(_score_batch(models, spec, pending, batcher))
            pending.clear()
    if pending:
        results.extend(_score_batch(models, spec, pending, batcher))
    return results


def select_images(
    pending: Sequence[PendingImage], started: dt.datetime
) -> tuple[list[Candidate], list[ImageScore]]:
    """Split a study's unscored instances, by their row alone, into files to score and skips."""
    candidates: list[Candidate] = []
    skipped: list[ImageScore] = []
    for row in pending:
        reason = row_skip_reason(row)
        if reason is None:
            candidates.append(Candidate(row.instance_id, row.sop_instance_uid, row.path, row))
        else:
            skipped.append(
                ImageScore(row.instance_id, row.sop_instance_uid, started, skipped_reason=reason)
            )
    return candidates, skipped


def _hand_over(
    store: Store,
    plan: TriagePlan,
    model: ScoringModel,
    scores: list[ImageScore],
    started: dt.datetime,
) -> TriageOutcome:
    """Record the scores; a concurrent run of the same study that got there first is merged."""
    for attempt in (1, 2):
        try:
            return store.run(
                lambda session: triage_results.record(
                    session, plan.study_id, model, scores, started
                )
            )
        except IntegrityError:
            if attempt == 2:
                raise
            logger.info("study %s: concurrent triage, merging", plan.study_id)
    raise AssertionError("unreachable")


def _start(
    store: Store, study_uid: str, max_deliveries: int | None = None
) -> tuple[TriagePlan, ModelSpec | None, ScoringModel | None]:
    """The study's plan, status and delivery count in one transaction and, when a version is
    active, its model as the worker scores it."""

    def work(session: Session) -> tuple[TriagePlan, ModelSpec | None, ScoringModel | None]:
        plan = triage_results.start(session, study_uid, max_deliveries=max_deliveries)
        active = plan.model
        if active is None:
            return plan, None, None
        return plan, ModelSpec.of(active), ScoringModel(active.id, active.version, active.sha256)

    return store.run(work)


def _nothing_to_score(
    study_uid: str, plan: TriagePlan, spec: ModelSpec | None
) -> TriageOutcome | None:
    """The outcome of a run that scores nothing (parked, no active model, nothing new), or None."""
    if plan.parked is not None:
        logger.error("study %s: %s", study_uid, plan.parked)
        return TriageOutcome(study_uid, StudyStatus.FAILED, detail=plan.parked)
    if spec is None:
        logger.warning("study %s: no active model version", study_uid)
        return TriageOutcome(study_uid, StudyStatus.NO_MODEL, detail="no active model version")
    if not plan.pending and plan.current is not None:
        # A resent instance or a duplicate message set it queued: it is up to date again.
        logger.info("study %s: nothing new for model %s", study_uid, spec.version)
        return plan.current
    return None


def _log_outcome(study_uid: str, outcome: TriageOutcome, spec: ModelSpec) -> None:
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


def triage_study(
    store: Store,
    models: ModelCache,
    study_uid: str,
    *,
    batch_size: int = 8,
    workers: int = DEFAULT_WORKERS,
    limits: ImageLimits | None = None,
    batcher: Batcher | None = None,
    max_deliveries: int | None = None,
) -> TriageOutcome:
    """Triage one study with the active model version and the policy in force.

    With a ``batcher`` (shared by the worker's task threads) its images share forward passes
    with other studies'; its result is still recorded alone, in its own transaction. With
    ``max_deliveries`` (the worker's poison guard), a study whose runs kept stopping their
    worker is parked as failed instead (status ``failed``, nothing scored).

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
    plan, spec, model = _start(store, study_uid, max_deliveries)
    ended = _nothing_to_score(study_uid, plan, spec)
    if ended is not None:
        return ended
    assert spec is not None and model is not None  # without a model, nothing is scored
    candidates, skipped = select_images(plan.pending, started)
    with batcher.session() if batcher else contextlib.nullcontext():
        scores = skipped + score_images(
            models,
            spec,
            candidates,
            batch_size=batch_size,
            workers=workers,
            limits=limits,
            batcher=batcher,
        )
    outcome = _hand_over(store, plan, model, scores, started)
    _log_outcome(study_uid, outcome, spec)
    return outcome
