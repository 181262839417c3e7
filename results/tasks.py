"""Celery tasks of the results queue: what follows a triage event, one delivery at a time.

The messages carry an event id or a delivery row id, nothing else. Late acknowledgement (set on
the app): a task whose worker died runs again, and both tasks are idempotent (planning keeps
existing rows; a delivery is sent only by whoever claims it).
"""

from __future__ import annotations

import logging

from celery import Task, shared_task

from cxr_triage.settings import Settings
from governance.db import Store
from governance.errors import StoreUnavailable
from results import config as results_config
from results.delivery import ResultsContext, deliver, plan_event
from worker.celery_app import DELIVER, DELIVER_EVENT, ProcessContext

logger = logging.getLogger(__name__)


def build_context(settings: Settings) -> ResultsContext:
    """The store and the result destinations (``CXR_RESULTS_CONFIG``) of this process."""
    return ResultsContext(
        settings=settings,
        store=Store.from_settings(settings),
        config=results_config.load(settings.results_config),
    )


_context: ProcessContext[ResultsContext] = ProcessContext(build_context)


def get_context(settings: Settings) -> ResultsContext:
    """The process-wide store and destinations, built once from the worker's settings."""
    return _context.get(settings)


@shared_task(name=DELIVER_EVENT, bind=True, acks_late=True, reject_on_worker_lost=True)
def deliver_event_task(self: Task, event_id: int) -> list[int]:
    """Plan the event's deliveries and send one task per delivery (each attempted alone)."""
    ctx = get_context(self.app.cxr_settings)  # type: ignore[attr-defined]
    try:
        ids = plan_event(ctx, int(event_id))
    except StoreUnavailable as exc:
        logger.warning("event %s: store unavailable (%s); the sweep will plan it", event_id, exc)
        return []
    for delivery_id in ids:
        self.app.send_task(DELIVER, args=[delivery_id], queue=ctx.settings.results_queue)
    return ids


@shared_task(name=DELIVER, bind=True, acks_late=True, reject_on_worker_lost=True)
def deliver_task(self: Task, delivery_id: int) -> str | None:
    """Attempt one delivery if it is due (a retry waits for the sweep at its next attempt)."""
    ctx = get_context(self.app.cxr_settings)  # type: ignore[attr-defined]
    try:
        return deliver(ctx, int(delivery_id))
    except StoreUnavailable as exc:
        logger.warning("delivery %s: store unavailable (%s); the sweep retries", delivery_id, exc)
        return None
