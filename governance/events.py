"""The one "study triaged" event that export, notifications and monitoring subscribe to.

A triage is recorded in one transaction; :func:`emit_study_triaged` is called inside it, so the
event exists exactly when the triage does. It is kept twice over:

- as a row of ``triage_events`` (the outbox): consumers in other processes (the results queue)
  read it by id and keep their own progress, so an event survives any process dying;
- as a call to each in-process subscriber registered with :func:`subscribe`, made inside the same
  transaction, for consumers that write to the store alongside the triage (monitoring features).
  A subscriber that raises aborts the triage's transaction: subscribers must only add rows.

Work that must happen only once the transaction has committed (sending a Celery message, say)
is registered with :func:`after_commit` and run by :meth:`governance.db.Store.run` after commit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from governance.models import TriageEvent
from governance.rows import from_attributes

logger = logging.getLogger(__name__)

Subscriber = Callable[[Session, "StudyTriaged"], None]

_subscribers: list[Subscriber] = []

AFTER_COMMIT_KEY = "cxr_after_commit"


@dataclass(frozen=True, slots=True)
class StudyTriaged:
    """What a triage decided for one study; no patient identifiers.

    Each field but ``event_id`` is named as the ``triage_events`` column it is read from.
    """

    event_id: int
    study_id: int
    study_instance_uid: str
    status: str
    model_version_id: int | None
    model_version: str | None
    study_inference_id: int | None
    probability: float | None
    tau: float | None
    policy_version: int | None
    flagged: bool
    previously_flagged: bool
    # Decided under a shadow policy: the flag is recorded and audited, but export and
    # notification must not act on it (and the worklist shows no priority).
    shadow: bool = False

    @property
    def actionable(self) -> bool:
        """A live flag: what export and notification act on."""
        return self.flagged and not self.shadow

    @property
    def newly_flagged(self) -> bool:
        return self.flagged and not self.previously_flagged

    @property
    def unflagged(self) -> bool:
        return self.previously_flagged and not self.flagged

    @classmethod
    def of(cls, row: TriageEvent) -> StudyTriaged:
        return from_attributes(
            cls,
            row,
            event_id=row.id,
            flagged=bool(row.flagged),
            previously_flagged=bool(row.previously_flagged),
            shadow=bool(row.shadow),
        )


def subscribe(subscriber: Subscriber) -> Subscriber:
    """Call ``subscriber(session, event)`` inside every triage transaction from now on."""
    if subscriber not in _subscribers:
        _subscribers.append(subscriber)
    return subscriber


def unsubscribe(subscriber: Subscriber) -> None:
    if subscriber in _subscribers:
        _subscribers.remove(subscriber)


def after_commit(session: Session, callback: Callable[[], None]) -> None:
    """Run ``callback`` once the transaction of ``session`` has committed (never on rollback)."""
    session.info.setdefault(AFTER_COMMIT_KEY, []).append(callback)


def run_after_commit(session: Session) -> None:
    """Run and clear the callbacks :func:`after_commit` registered; a failing one is logged."""
    callbacks = session.info.pop(AFTER_COMMIT_KEY, [])
    for callback in callbacks:
        try:
            callback()
        except Exception:
            logger.exception("after-commit callback %r failed", callback)


def discard_after_commit(session: Session) -> None:
    session.info.pop(AFTER_COMMIT_KEY, None)


def emit_study_triaged(
    session: Session,
    *,
    study_id: int,
    study_instance_uid: str,
    status: str,
    model_version_id: int | None,
    model_version: str | None,
    study_inference_id: int | None,
    probability: float | None,
    tau: float | None,
    policy_version: int | None,
    flagged: bool,
    previously_flagged: bool,
    shadow: bool = False,
) -> StudyTriaged:
    """Record the event in the current transaction and hand it to every subscriber."""
    row = TriageEvent(
        study_id=study_id,
        study_instance_uid=study_instance_uid,
        status=status,
        model_version_id=model_version_id,
        model_version=model_version,
        study_inference_id=study_inference_id,
        probability=probability,
        tau=tau,
        policy_version=policy_version,
        flagged=flagged,
        previously_flagged=previously_flagged,
        shadow=shadow,
    )
    session.add(row)
    session.flush()
    event = StudyTriaged.of(row)
    for subscriber in list(_subscribers):
        subscriber(session, event)
    return event
