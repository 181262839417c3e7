"""The Celery application, shared by the worker (consumer) and the gateway and web (producers).

This module must not import torch or anything that does: the gateway imports it to queue
studies by task name. Broker messages carry a Study Instance UID and nothing else.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from celery import Celery
from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.json import dumps

from cxr_triage.settings import Settings

logger = logging.getLogger(__name__)

TRIAGE_STUDY = "triage_study"
#: Tasks of the results worker (package ``results``), sent by name: plan and send what follows
#: one triage event (message: the event id only), and attempt one delivery (its row id).
DELIVER_EVENT = "results.deliver_event"
DELIVER = "results.deliver"

# Fail fast when the broker is down: the gateway keeps the study and queues it again later,
# instead of holding a DICOM association for kombu's default retries.
PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}

REDIS_VISIBILITY_TIMEOUT_S = 300

T = TypeVar("T")


class _AtomicFilesystemChannel(filesystem.Channel):  # type: ignore[misc]
    """kombu's filesystem channel, each message written under a temporary name, then renamed.

    kombu's reader takes a message file as soon as its name appears, while kombu's writer
    fills it in place: a reader can take it empty, and a worker stops on the JSON error. The
    worker writes to the queues it consumes (the backlog lane, worker.lanes), so the gap is
    met under a burst; the gateway's messages could meet it too. A name that does not end in
    ``.{queue}.msg`` is invisible to readers until the rename (atomic on one filesystem).
    """

    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{round(time.monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = final + ".part"
        try:
            with open(partial, "wb") as f:
                f.write(dumps(payload).encode())
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {name!r} to the queue folder") from exc


class AtomicFilesystemTransport(filesystem.Transport):  # type: ignore[misc]
    """The embedded broker's transport (kombu's filesystem one, with atomic writes)."""

    Channel = _AtomicFilesystemChannel


def broker_settings(settings: Settings) -> tuple[str, dict[str, Any]]:
    """The broker URL and transport options (the embedded default: kombu's filesystem one)."""
    if settings.broker_url and not settings.broker_url.startswith("filesystem://"):
        # Redis hands an unacknowledged message (late ack: its worker died) to another
        # worker after the visibility timeout; kombu's default is an hour. A triage takes
        # seconds and a worker reserves one message ahead, so five minutes is ample, and a
        # rare duplicate is harmless (idempotent tasks).
        options: dict[str, Any] = {"visibility_timeout": REDIS_VISIBILITY_TIMEOUT_S}
        return settings.broker_url, options if settings.broker_url.startswith("redis") else {}
    base = settings.broker_dir
    queue_dir = base / "queue"
    processed_dir = base / "processed"
    # kombu keeps exchange bindings in "control/" relative to the working directory unless told.
    control_dir = base / "control"
    for folder in (queue_dir, processed_dir, control_dir):
        folder.mkdir(parents=True, exist_ok=True)
    options = {
        "data_folder_in": str(queue_dir),
        "data_folder_out": str(queue_dir),
        "processed_folder": str(processed_dir),
        "control_folder": str(control_dir),
        "store_processed": False,
        "polling_interval": 0.05,
    }
    return "filesystem://", options


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured from ``settings`` (late ack, one prefetch, no result backend)."""
    url, transport_options = broker_settings(settings)
    app = Celery("cxr_triage", set_as_current=True)
    app.conf.update(
        broker_url=url,
        broker_transport=AtomicFilesystemTransport if url == "filesystem://" else None,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        task_default_queue=settings.queue,
        task_routes={
            TRIAGE_STUDY: {"queue": settings.queue},
            DELIVER_EVENT: {"queue": settings.results_queue},
            DELIVER: {"queue": settings.results_queue},
        },
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        task_publish_retry_policy=PUBLISH_RETRY_POLICY,
        imports=("worker.tasks", "worker.monitoring_tasks"),
    )
    app.cxr_settings = settings  # type: ignore[attr-defined]
    return app


def queue_study(app: Celery, study_uid: str) -> None:
    """Send ``triage_study(study_uid)`` by name.

    Raises
    ------
    kombu.exceptions.OperationalError
        The broker did not take the message.
    """
    app.send_task(TRIAGE_STUDY, args=[study_uid], queue=app.conf.task_default_queue)


def queue_results(app: Celery, event_id: int, queue: str) -> None:
    """Send ``results.deliver_event(event_id)`` by name to the results queue.

    Raises
    ------
    BrokerUnavailable
        The broker did not take the message (the results worker's sweep finds the event).
    """
    app.send_task(DELIVER_EVENT, args=[event_id], queue=queue)


class ProcessContext(Generic[T]):
    """What the tasks of one worker process share (the store, a model cache, destinations).

    Built from the worker's settings on first use, once, by whichever task thread gets there
    first; an entry point that has built it already hands it over with :meth:`set`.

    Parameters
    ----------
    build
        Builds the context from the settings (called at most once until :meth:`set`).
    """

    def __init__(self, build: Callable[[Settings], T]) -> None:
        self._build = build
        self._value: T | None = None
        self._lock = threading.Lock()

    def get(self, settings: Settings) -> T:
        """The context, built from ``settings`` if this process has none yet."""
        with self._lock:
            if self._value is None:
                self._value = self._build(settings)
            return self._value

    def set(self, value: T | None) -> None:
        """Use ``value`` from now on (None: build again on the next :meth:`get`)."""
        with self._lock:
            self._value = value
