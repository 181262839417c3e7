"""Two lanes for triage tasks, so a study arriving during a burst is not scored after it.

Brokers hand out a queue in arrival order: with 200 studies queued, the 201st waits for all of
them, whatever it shows. The worker consumes two queues, and Celery's consumer serves them in
turn (kombu rotates the queues it polls, on Redis and on the filesystem broker alike):

- the *new* lane, where every study is sent (``CXR_QUEUE``), and
- the *backlog* lane (``CXR_QUEUE`` + ``-backlog``).

A task taken from the new lane while other messages still wait there is moved to the backlog
together with those others, in one go (:func:`move_burst`: each is sent to the backlog, then
acknowledged; a worker dying in between leaves both messages, and the second triage of the
study finds nothing new). A burst thus leaves the new lane within a few milliseconds a study
and is scored from the backlog in its order, while a study that arrives later waits behind at
most the few studies being scored instead of the whole burst. Nothing here looks at what a
study holds: the broker messages carry the Study Instance UID only.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from worker.celery_app import TRIAGE_STUDY

logger = logging.getLogger(__name__)

BACKLOG_SUFFIX = "-backlog"


def backlog_queue(queue: str) -> str:
    """The backlog lane of ``queue``."""
    if not queue:
        raise ValueError("queue must not be empty")
    return queue + BACKLOG_SUFFIX


def waiting(app: Celery, queue: str) -> int:
    """Messages waiting in ``queue`` (not counting those already handed to a worker).

    Raises
    ------
    kombu.exceptions.OperationalError
        The broker cannot be reached.
    """
    with app.pool.acquire(block=True) as connection:
        declared = connection.default_channel.queue_declare(
            queue=queue, durable=True, auto_delete=False
        )
        return int(declared.message_count)


def should_move_to_backlog(app: Celery, queue: str, delivered_from: str | None) -> bool:
    """Whether a task delivered from ``delivered_from`` goes to the backlog of ``queue``.

    Only a task from the new lane with others waiting behind it; when the broker cannot say,
    the task is scored where it is.
    """
    if delivered_from != queue:
        return False
    try:
        return waiting(app, queue) > 0
    except Exception as exc:  # kombu's errors vary by transport: score it, never lose it
        logger.warning("queue length unknown (%s); scoring without the backlog", exc)
        return False


def move_burst(app: Celery, queue: str, *, limit: int = 10_000) -> int:
    """Move the triage messages waiting in ``queue`` to its backlog lane; how many moved.

    Stops at the first message that is not a triage task (given back to ``queue``), when the
    queue is empty, or after ``limit`` messages.

    Raises
    ------
    kombu.exceptions.OperationalError
        The broker cannot be reached (what moved so far stays moved).
    """
    moved = 0
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        while moved < limit:
            message = channel.basic_get(queue, no_ack=False)
            if message is None:
                break
            study_uid = _study_of(message)
            if study_uid is None:
                message.requeue()
                break
            move_to_backlog(app, study_uid, queue)
            message.ack()
            moved += 1
    return moved


def _study_of(message: Any) -> str | None:
    """The Study Instance UID of a triage task message (Celery's protocol 2), or None."""
    if (message.headers or {}).get("task") != TRIAGE_STUDY:
        return None
    try:
        args = message.decode()[0]
    except Exception:  # not ours to judge: leave it for the worker, which reports it
        return None
    if isinstance(args, list) and len(args) == 1 and isinstance(args[0], str):
        return args[0]
    return None


def move_to_backlog(app: Celery, study_uid: str, queue: str) -> None:
    """Send ``triage_study(study_uid)`` to the backlog lane of ``queue``.

    Raises
    ------
    kombu.exceptions.OperationalError
        The broker did not take the message.
    """
    app.send_task(TRIAGE_STUDY, args=[study_uid], queue=backlog_queue(queue))
