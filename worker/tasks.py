"""Celery tasks of the worker. Heavy imports (torch, the model) happen inside the task.

Late acknowledgement and one prefetch per task thread are set on the app (worker.celery_app):
a task whose worker dies is delivered again, and triage is idempotent on (study, model
version). The worker runs ``CXR_WORKER_STUDIES`` tasks at once in threads (worker.main); they
share the model, the prefetch pool and one :class:`worker.batcher.Batcher`, so images of
several studies are scored in one forward pass while each study is recorded on its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celery import Task, shared_task
from celery.signals import worker_ready

from cxr_triage.settings import Settings
from governance import events, triage_results
from governance.db import Store
from governance.errors import ModelIntegrityError, NotFound, StoreRejected, StoreUnavailable
from governance.models import StudyStatus
from governance.studies import finish_delivery
from worker.celery_app import TRIAGE_STUDY, ProcessContext, queue_results
from worker.limits import ImageLimits

if TYPE_CHECKING:
    from worker.batcher import Batcher
    from worker.inference import ModelCache

logger = logging.getLogger(__name__)

STORE_RETRY_DELAYS = (1, 2, 5, 10, 30, 60, 120)


@dataclass
class WorkerContext:
    settings: Settings
    store: Store
    models: ModelCache
    batcher: Batcher


def get_context(settings: Settings) -> WorkerContext:
    """The process-wide store and model cache, built once from the worker's settings."""
    return _context.get(settings)


def make_context(settings: Settings, store: Store) -> WorkerContext:
    """A worker context on ``store``: the model cache and the cross-study batcher (and the
    forward pass's CPU threads, where CXR_CPU_THREADS sets them)."""
    import torch

    from worker.batcher import Batcher
    from worker.inference import ModelCache, predict_logits

    if settings.cpu_threads:
        torch.set_num_threads(settings.cpu_threads)
    return WorkerContext(
        settings=settings,
        store=store,
        models=ModelCache(device=settings.device, precision=settings.precision),
        batcher=Batcher(
            predict_logits,
            batch_size=settings.batch_size,
            max_wait_s=settings.batch_wait_ms / 1000,
        ),
    )


_context: ProcessContext[WorkerContext] = ProcessContext(
    lambda settings: make_context(settings, Store.from_settings(settings))
)
# Guards the per-study locks below and the results hook.
_lock = threading.Lock()

# Studies being triaged in this process, with how many task threads hold or wait for each.
_studies: dict[str, tuple[threading.Lock, list[int]]] = {}


@contextmanager
def _one_at_a_time(study_uid: str) -> Iterator[None]:
    """Triage a study in one task thread at a time: a second message for it (a redelivery, a
    copy left by a move to the backlog) waits, then finds nothing new instead of scoring and
    recording the study a second time beside the first."""
    with _lock:
        lock, holders = _studies.setdefault(study_uid, (threading.Lock(), [0]))
        holders[0] += 1
    try:
        with lock:
            yield
    finally:
        with _lock:
            holders[0] -= 1
            if holders[0] == 0:
                del _studies[study_uid]


_results_hook: events.Subscriber | None = None


def install_results_hook(app: Any, settings: Settings) -> None:
    """Queue each "study triaged" event for the results worker once its triage commits.

    Only when result destinations are configured (nobody consumes the queue otherwise). The
    message carries the event id only; a lost one is found by the results worker's sweep.
    """
    global _results_hook
    with _lock:  # the task threads call this at once: subscribe one hook, not one each
        if _results_hook is not None or settings.results_config is None:
            return
        _results_hook = events.subscribe(_results_sender(app, settings.results_queue))


def _results_sender(app: Any, queue: str) -> events.Subscriber:
    """A subscriber that sends ``results.deliver_event`` once the triage commits."""

    def on_triaged(session: Any, event: events.StudyTriaged) -> None:
        def send() -> None:
            try:
                queue_results(app, event.event_id, queue)
            except Exception as exc:  # the sweep picks the event up
                logger.warning("event %d not queued for results: %s", event.event_id, exc)

        events.after_commit(session, send)

    return on_triaged


@shared_task(name=TRIAGE_STUDY, bind=True, acks_late=True, reject_on_worker_lost=True)
def triage_study_task(self: Task, study_uid: str) -> dict[str, Any] | None:
    """Triage one study by its Study Instance UID (the only thing the message carries)."""
    from worker.triage import triage_study

    ctx = get_context(self.app.cxr_settings)  # type: ignore[attr-defined]
    install_results_hook(self.app, ctx.settings)
    if _to_backlog(self, ctx.settings, study_uid):
        return {"study_instance_uid": study_uid, "status": "backlog", "flagged": False}
    limits = ImageLimits(max_pixels=ctx.settings.max_pixels, max_frames=ctx.settings.max_frames)
    try:
        with _one_at_a_time(study_uid):
            # Counts this delivery (the poison guard) in the transaction that begins the study,
            # and resets the count in the one that records it.
            outcome = triage_study(
                ctx.store,
                ctx.models,
                study_uid,
                batch_size=ctx.settings.batch_size,
                limits=limits,
                batcher=ctx.batcher,
                max_deliveries=ctx.settings.max_deliveries,
            )
    except NotFound:
        logger.error("study %s is not in the store; nothing to triage", study_uid)
        return None
    except StoreUnavailable as exc:
        retries = self.request.retries
        delay = STORE_RETRY_DELAYS[min(retries, len(STORE_RETRY_DELAYS) - 1)]
        logger.warning(
            "study %s: store unavailable (%s); retry %d in %d s", study_uid, exc, retries + 1, delay
        )
        raise self.retry(countdown=delay, max_retries=50) from None
    except (ModelIntegrityError, StoreRejected) as exc:
        # Permanent: retrying would fail the same way; a person fixes the cause and retries.
        logger.error("study %s not triaged: %s", study_uid, exc)
        _mark_failed(ctx.store, study_uid, str(exc))
        return None
    except Exception:
        logger.exception("study %s: triage failed", study_uid)
        _mark_failed(ctx.store, study_uid, "triage failed; see the worker log")
        return None
    if outcome.status == StudyStatus.FAILED:  # parked by the poison guard
        return None
    if ctx.settings.heatmaps and outcome.images_scored:
        _heatmap(ctx, study_uid)
    return {
        "study_instance_uid": outcome.study_instance_uid,
        "status": outcome.status,
        "flagged": outcome.flagged,
    }


def _to_backlog(task: Task, settings: Settings, study_uid: str) -> bool:
    """Move a study with others waiting behind it in the new lane to the backlog (lanes.py).

    Before the delivery is counted: a moved study has not been tried. False when it stays.
    """
    if not settings.backlog_lanes:
        return False
    from worker.lanes import move_burst, move_to_backlog, should_move_to_backlog

    delivered_from = (task.request.delivery_info or {}).get("routing_key")
    if not should_move_to_backlog(task.app, settings.queue, delivered_from):
        return False
    try:
        move_to_backlog(task.app, study_uid, settings.queue)
    except Exception as exc:  # the broker refused: score it here rather than lose it
        logger.warning("study %s: not moved to the backlog (%s); scoring it now", study_uid, exc)
        return False
    try:
        others = move_burst(task.app, settings.queue)
    except Exception as exc:  # what is left in the new lane is served from there
        logger.warning("the burst behind study %s not moved (%s)", study_uid, exc)
        others = 0
    logger.info("study %s and %d queued behind it: moved to the backlog lane", study_uid, others)
    return True


def _heatmap(ctx: WorkerContext, study_uid: str) -> None:
    """Grad-CAM of the scored image; a failure costs the heatmap only, never the triage."""
    from worker.saliency import compute_study_heatmap

    try:
        compute_study_heatmap(ctx.store, ctx.settings, study_uid)
    except Exception:
        logger.exception("study %s: heatmap failed", study_uid)


def _mark_failed(store: Store, study_uid: str, detail: str) -> None:
    """Park the study as failed with its reason; the task is over, so its deliveries reset."""

    def work(session: Any) -> None:
        triage_results.fail(session, study_uid, detail)
        finish_delivery(session, study_uid)

    try:
        store.run(work)
    except (StoreUnavailable, StoreRejected):
        logger.error("study %s: could not record the failure in the store", study_uid)


@worker_ready.connect
def _preload_model(sender: Any = None, **_: Any) -> None:
    """Load the active model before the first study arrives, so it does not wait for it."""
    app = getattr(sender, "app", None)
    settings = getattr(app, "cxr_settings", None)
    if settings is None:
        return
    from governance.registry import active_model
    from worker.inference import ModelSpec

    ctx = get_context(settings)
    try:
        with ctx.store.read() as session:
            model = active_model(session)
            if model is None:
                logger.warning("no active model version yet; studies will wait as no_model")
                return
            spec = ModelSpec.of(model)
        ctx.models.get(spec)
    except (StoreUnavailable, ModelIntegrityError) as exc:
        logger.error("could not preload the active model: %s", exc)
