"""The reconciler: studies the store says were received but that the active model has not
triaged, found and queued again with a bounded number of attempts.

Run by the gateway's store sweep (every ``CXR_SWEEP_INTERVAL_S``; there is no beat service yet).
Three kinds, each only once ``grace`` has passed since the study was last queued (or received):

- **not triaged**: received, queued or waiting for a model (with one active now), or triaged
  with an instance the active version has not scored, and no message sent since the grace
  began: the message was lost (broker flushed or restarted without persistence, a crash
  between receipt and queueing). While workers are busy, only once a study queued after it has
  been started (a long queue is not a lost message);
- **worker gone**: ``triaging`` for longer than the grace: its worker died mid-study (the
  broker redelivers too, later; triage is idempotent);
- **failed**: ``failed`` with a cause that may be gone (model file back, memory freed, a worker
  restarted).

Each requeue counts in ``studies.reconcile_attempts`` and the next waits twice as long
(grace x 2^attempts: a long queue is not a lost message); a study that reaches ``max_attempts``
without being triaged is parked as ``failed`` with the reason, for a person to look at and
retry (``cxr-triage study retry``, which starts the count again). A triage resets the count.
Studies whose every file was pruned by spool retention are never queued again.

Two counters, two questions. ``studies.deliveries`` (the worker's poison guard,
``CXR_MAX_DELIVERIES``) counts runs of the triage task that began scoring and never recorded
a result (``triage_results.start`` and ``record``): each one took its worker down.
``studies.reconcile_attempts`` counts requeues by this module: each is a message presumed
lost, or a failure whose cause may be gone. A requeue whose run dies
counts once in each, as it is both; neither resets the other, so a study that keeps killing
workers is parked by the guard even while it is being requeued here. A study the guard parked
(``failed`` with unfinished runs) is never requeued automatically, since another run would
take another worker down: only a person's retry, which starts both counts again.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, exists, or_, select, true
from sqlalchemy.orm import Session, aliased

from governance import audit, triage_results
from governance.models import ImageInference, Instance, Study, StudyInference, StudyStatus, utcnow
from governance.registry import active_model

logger = logging.getLogger(__name__)

ACTOR = "cxr-triage-reconciler"
#: The most studies one run queues again (the next run takes the rest).
MAX_PER_RUN = 500


class Kind:
    NOT_TRIAGED = "not_triaged"
    WORKER_GONE = "worker_gone"
    FAILED = "failed"


@dataclass
class Reconciliation:
    """What one run decided: the studies to queue (UID -> kind) and those given up on."""

    requeue: dict[str, str] = field(default_factory=dict)
    gave_up: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(self.requeue.values()))


def pending_for(model_id: int) -> object:
    """SQL: the study has an instance (file not pruned) not scored by ``model_id``."""
    other = aliased(Instance)
    return exists().where(
        other.study_id == Study.id,
        other.pruned_at.is_(None),
        ~exists().where(
            ImageInference.instance_id == other.id, ImageInference.model_version_id == model_id
        ),
    )


def up_to_date(model_id: int) -> object:
    """SQL: the study is triaged by ``model_id`` with nothing left to score."""
    return and_(
        exists().where(
            StudyInference.study_id == Study.id, StudyInference.model_version_id == model_id
        ),
        ~pending_for(model_id),  # type: ignore[operator]
    )


def reconcile(
    session: Session,
    *,
    grace: dt.timedelta,
    max_attempts: int,
    now: dt.datetime | None = None,
    limit: int = MAX_PER_RUN,
) -> Reconciliation:
    """Find the studies to queue again, count the attempt, park the hopeless; audit once.

    The caller sends one message per ``requeue`` UID after the transaction commits (and marks
    them queued); a study whose message cannot be sent is found again next run.

    Parameters
    ----------
    grace
        How long a study may stay received/queued/triaging before it counts as lost.
    max_attempts
        Requeues without a triage before a study is parked as failed.
    """
    if grace.total_seconds() <= 0:
        raise ValueError(f"grace must be positive, got {grace}")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
    now = now or utcnow()
    model = active_model(session)
    result = Reconciliation()
    if model is None:
        return result  # nothing can be triaged; NO_MODEL studies wait for an activation
    cutoff = now - grace
    last_touched = Study.queued_at.is_(None) | (Study.queued_at <= cutoff)
    lost = _message_lost(session, cutoff)
    waiting = and_(
        Study.status.in_([StudyStatus.RECEIVED, StudyStatus.QUEUED, StudyStatus.NO_MODEL]),
        Study.last_received_at <= cutoff,
        last_touched,
        lost,
        pending_for(model.id),  # type: ignore[arg-type]
    )
    new_instance = and_(
        Study.status.in_([StudyStatus.TRIAGED, StudyStatus.NO_FRONTAL]),
        Study.last_received_at <= cutoff,
        last_touched,
        lost,
        exists().where(
            StudyInference.study_id == Study.id, StudyInference.model_version_id == model.id
        ),
        pending_for(model.id),  # type: ignore[arg-type]
    )
    triaging = and_(Study.status == StudyStatus.TRIAGING, last_touched)
    failed = and_(
        Study.status == StudyStatus.FAILED,
        Study.deliveries == 0,  # parked by the worker's poison guard: a person's turn
        pending_for(model.id),  # type: ignore[arg-type]
    )
    candidates = session.scalars(
        select(Study)
        .where(or_(waiting, new_instance, triaging, failed))
        .order_by(Study.last_received_at, Study.id)
        .limit(limit)
    )
    for study in candidates:
        kind = _kind(study.status)
        attempts = study.reconcile_attempts or 0
        since = study.queued_at or study.last_received_at
        if since > now - grace * (2**attempts):
            continue  # backing off: a long queue is not a lost message
        if attempts >= max_attempts:
            if kind != Kind.FAILED:
                triage_results.fail(
                    session,
                    study.study_instance_uid,
                    f"not triaged after {attempts} automatic requeues; "
                    "check the workers, then `cxr-triage study retry`",
                )
                result.gave_up.append(study.study_instance_uid)
            continue  # a person's turn: `cxr-triage study retry`
        study.reconcile_attempts = attempts + 1
        result.requeue[study.study_instance_uid] = kind
    if result.requeue or result.gave_up:
        audit.record(
            session,
            "study",
            actor=ACTOR,
            action=audit.Action.STUDIES_REQUEUED,
            detail={
                "by": "reconciler",
                "requeued": result.counts,
                "gave_up": len(result.gave_up),
                "grace_s": grace.total_seconds(),
                "max_attempts": max_attempts,
            },
        )
        logger.info(
            "reconciler: queueing %d studies again %s; %d parked as failed",
            len(result.requeue),
            result.counts,
            len(result.gave_up),
        )
    return result


def _message_lost(session: Session, cutoff: dt.datetime) -> Any:
    """SQL: the study's message is presumably lost, not just waiting in a long queue.

    Messages are taken roughly in the order they were queued. While the workers are triaging
    (a triage finished within the grace), a study's message counts as lost only once a study
    queued after it has been started: the line has passed it. When nothing finished within the
    grace, the line is not moving (messages lost, or no worker running) and every stale study
    counts.
    """
    moving = session.scalar(select(exists().where(StudyInference.finished_at > cutoff)))
    if not moving:
        return true()
    later = aliased(StudyInference)
    return or_(
        Study.queued_at.is_(None),
        exists().where(later.queued_at > Study.queued_at, later.started_at >= Study.queued_at),
    )


def _kind(status: str) -> str:
    if status == StudyStatus.TRIAGING:
        return Kind.WORKER_GONE
    if status == StudyStatus.FAILED:
        return Kind.FAILED
    return Kind.NOT_TRIAGED
