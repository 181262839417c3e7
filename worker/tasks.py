"""Celery tasks of the worker. Heavy imports (torch, the model) happen inside the task.

Late acknowledgement and one prefetch are set on the app (worker.celery_app): a task whose
worker dies is delivered again, and triage is idempotent on (study, model version).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celery import Task, shared_task
from celery.signals import worker_ready

from cxr_triage.settings import Settings
from governance import triage_results
from governance.db import Store
from governance.errors import ModelIntegrityError, NotFound, StoreUnavailable
from worker.celery_app import TRIAGE_STUDY

if TYPE_CHECKING:
    from worker.inference import ModelCache

logger = logging.getLogger(__name__)

STORE_RETRY_DELAYS = (1, 2, 5, 10, 30, 60, 120)


@dataclass
class WorkerContext:
    settings: Settings
    store: Store
    models: ModelCache


_context: WorkerContext | None = None
_lock = threading.Lock()


def get_context(settings: Settings) -> WorkerContext:
    """The process-wide store and model cache, built once from the worker's settings."""
    global _context
    with _lock:
        if _context is None:
            from worker.inference import ModelCache

            _context = WorkerContext(
                settings=settings,
                store=Store.from_url(settings.database_url),
                models=ModelCache(device=settings.device, precision=settings.precision),
            )
        return _context


@shared_task(name=TRIAGE_STUDY, bind=True, acks_late=True, reject_on_worker_lost=True)
def triage_study_task(self: Task, study_uid: str) -> dict[str, Any] | None:
    """Triage one study by its Study Instance UID (the only thing the message carries)."""
    from worker.triage import triage_study

    ctx = get_context(self.app.cxr_settings)  # type: ignore[attr-defined]
    try:
        outcome = triage_study(ctx.store, ctx.models, study_uid, batch_size=ctx.settings.batch_size)
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
    except ModelIntegrityError as exc:
        logger.error("study %s not triaged: %s", study_uid, exc)
        _mark_failed(ctx.store, study_uid, str(exc))
        return None
    except Exception:
        logger.exception("study %s: triage failed", study_uid)
        _mark_failed(ctx.store, study_uid, "triage failed; see the worker log")
        return None
    return {
        "study_instance_uid": outcome.study_instance_uid,
        "status": outcome.status,
        "flagged": outcome.flagged,
    }


def _mark_failed(store: Store, study_uid: str, detail: str) -> None:
    try:
        store.run(lambda session: triage_results.fail(session, study_uid, detail))
    except StoreUnavailable:
        logger.error("study %s: could not record the failure, store unavailable", study_uid)


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
