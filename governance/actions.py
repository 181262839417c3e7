"""What radiologists do to a study: acknowledge it, override its priority, record the final read.

A person's priority override stands: triage never writes these columns (worker.triage only
writes the model's result), so a re-triage after a new instance or a new model version changes
the model's flag but never the priority a person set. Only a person changes a person's
override, with a reason. The final read (pneumonia yes/no) is the ground truth that monitoring
compares the model with.

Every action is audited in the same transaction as the change it records. Reasons are free
text that a radiologist typed: they go to the audit trail, never to the process logs.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from governance import audit
from governance.models import AuditEvent, ModelVersion, Study, StudyInference, utcnow
from governance.studies import get_study

logger = logging.getLogger(__name__)


class Priority(enum.StrEnum):
    """Worklist priorities: read first, or in the order received."""

    PRIORITY = "priority"
    ROUTINE = "routine"
    ALL = enum.nonmember((PRIORITY, ROUTINE))


MAX_REASON = 1000
# A study page refreshes every few seconds: one "viewed" event per person and study per window.
VIEW_AUDIT_WINDOW = dt.timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class ActionResult:
    """The study after an action, and whether the action changed anything."""

    study_instance_uid: str
    changed: bool


@dataclass(frozen=True, slots=True)
class _Act:
    """One person acting on one study: what every action checks first and audits last."""

    session: Session
    study: Study
    study_uid: str
    actor: str
    actor_address: str | None

    @classmethod
    def begin(cls, session: Session, study_uid: str, actor: str, actor_address: str | None) -> _Act:
        actor = _check_actor(actor)
        return cls(session, get_study(session, study_uid), study_uid, actor, actor_address)

    def priority_detail(self, model_flagged: bool) -> dict[str, Any]:
        """The model's flag and the priority in force: what every action's audit shows."""
        priority = effective_priority(self.study.priority_override, model_flagged)
        return {"model_flagged": model_flagged, "priority": priority}

    def audit(
        self, action: audit.Action, detail: dict[str, Any], occurred_at: dt.datetime | None = None
    ) -> ActionResult:
        """Audit the action in the session's transaction; the study changed."""
        audit.record(
            self.session,
            "study",
            self.study_uid,
            actor=self.actor,
            actor_address=self.actor_address,
            action=action,
            occurred_at=occurred_at,
            detail=detail,
        )
        return ActionResult(self.study_uid, True)


def _model_flagged(session: Session, study: Study) -> bool:
    if study.result_id is None:
        return False
    result = session.get(StudyInference, study.result_id)
    return bool(result and result.flagged)


def effective_priority(priority_override: str | None, model_flagged: bool) -> str:
    """A person's override if there is one, else the model's flag."""
    if priority_override in Priority.ALL:
        return priority_override  # type: ignore[return-value]
    return Priority.PRIORITY if model_flagged else Priority.ROUTINE


def _check_actor(actor: str) -> str:
    if not actor or not actor.strip():
        raise ValueError("actor must name who acts")
    return actor.strip()[:128]


def _check_reason(reason: str | None) -> str:
    text = (reason or "").strip()
    if not text:
        raise ValueError("reason must not be empty: say why the priority changes")
    if len(text) > MAX_REASON:
        raise ValueError(f"reason must be at most {MAX_REASON} characters, got {len(text)}")
    return text


def acknowledge(
    session: Session, study_uid: str, *, actor: str, actor_address: str | None = None
) -> ActionResult:
    """Note that ``actor`` has seen the study's triage result.

    The first acknowledgement stands; acknowledging again changes nothing and records nothing.

    Raises
    ------
    NotFound
        No study has this UID.
    ValueError
        ``actor`` is empty.
    """
    act = _Act.begin(session, study_uid, actor, actor_address)
    study = act.study
    if study.acknowledged_at is not None:
        return ActionResult(study_uid, False)
    study.acknowledged_by = act.actor
    study.acknowledged_at = utcnow()
    logger.info("study %s acknowledged", study_uid)
    return act.audit(
        audit.Action.STUDY_ACKNOWLEDGED, act.priority_detail(_model_flagged(session, study))
    )


def override(
    session: Session,
    study_uid: str,
    *,
    priority: str | None,
    reason: str,
    actor: str,
    actor_address: str | None = None,
) -> ActionResult:
    """Set (or, with ``priority=None``, clear) a person's priority for a study.

    Upwards or downwards; a reason is always required. Clearing hands the priority back to
    the model's flag.

    Parameters
    ----------
    priority
        ``"priority"``, ``"routine"``, or None to clear the override.
    reason
        Why (required, at most 1000 characters); kept with the study and in the audit.

    Raises
    ------
    NotFound
        No study has this UID.
    ValueError
        ``priority`` is not one of priority, routine or None; ``reason`` or ``actor`` is empty;
        there is no override to clear.
    """
    if priority is not None and priority not in Priority.ALL:
        raise ValueError(f"priority must be one of {', '.join(Priority.ALL)}, got {priority!r}")
    text = _check_reason(reason)
    act = _Act.begin(session, study_uid, actor, actor_address)
    study = act.study
    if priority is None and study.priority_override is None:
        raise ValueError("there is no override to clear on this study")
    flagged = _model_flagged(session, study)
    before = effective_priority(study.priority_override, flagged)
    previous: dict[str, Any] = {
        "priority_override": study.priority_override,
        "overridden_by": study.overridden_by,
    }
    study.priority_override = priority
    study.override_reason = text
    study.overridden_by = act.actor
    study.overridden_at = utcnow()
    after = effective_priority(priority, flagged)
    cleared = priority is None
    logger.info(
        "study %s priority %s -> %s (%s)",
        study_uid,
        before,
        after,
        "override cleared" if cleared else "override",
    )
    return act.audit(
        audit.Action.STUDY_OVERRIDDEN,
        {
            "from": before,
            "to": after,
            "override": priority,
            "cleared": cleared,
            "model_flagged": flagged,
            "reason": text,
            "previous": previous,
        },
    )


def clear_override(
    session: Session,
    study_uid: str,
    *,
    reason: str,
    actor: str,
    actor_address: str | None = None,
) -> ActionResult:
    """Hand a study's priority back to the model's flag (see :func:`override`)."""
    return override(
        session, study_uid, priority=None, reason=reason, actor=actor, actor_address=actor_address
    )


def record_final_read(
    session: Session,
    study_uid: str,
    *,
    pneumonia: bool,
    actor: str,
    actor_address: str | None = None,
) -> ActionResult:
    """Record the radiologist's final read: pneumonia yes or no (the ground-truth label).

    A later read replaces an earlier one (a correction); the audit keeps both.

    Raises
    ------
    NotFound
        No study has this UID.
    TypeError
        ``pneumonia`` is not a bool.
    """
    if not isinstance(pneumonia, bool):
        raise TypeError(f"pneumonia must be a bool, got {type(pneumonia).__name__}")
    act = _Act.begin(session, study_uid, actor, actor_address)
    study = act.study
    previous = study.final_read
    if previous is pneumonia and study.final_read_by == act.actor:
        return ActionResult(study_uid, False)
    result = session.get(StudyInference, study.result_id) if study.result_id else None
    model = session.get(ModelVersion, result.model_version_id) if result else None
    study.final_read = pneumonia
    study.final_read_by = act.actor
    study.final_read_at = utcnow()
    logger.info("study %s final read recorded", study_uid)
    return act.audit(
        audit.Action.FINAL_READ_RECORDED,
        {
            "pneumonia": pneumonia,
            "previous": previous,
            "probability": result.probability if result else None,
            "model_version": model.version if model else None,
            **act.priority_detail(bool(result and result.flagged)),
        },
    )


def record_study_viewed(
    session: Session,
    study_uid: str,
    *,
    actor: str,
    actor_address: str | None = None,
    via: str = "api",
    now: dt.datetime | None = None,
) -> bool:
    """Audit that ``actor`` looked at a study (DICOM 110103 DICOM Instances Accessed).

    One event per person and study in :data:`VIEW_AUDIT_WINDOW`: a page that refreshes every
    few seconds is one viewing. Returns whether an event was recorded.

    Raises
    ------
    NotFound
        No study has this UID.
    """
    act = _Act.begin(session, study_uid, actor, actor_address)
    when = now or utcnow()
    if viewed_recently(session, study_uid, actor=act.actor, now=when):
        return False
    act.audit(audit.Action.STUDY_VIEWED, {"via": via}, occurred_at=when)
    return True


def viewed_recently(
    session: Session, study_uid: str, *, actor: str, now: dt.datetime | None = None
) -> bool:
    """Whether ``actor``'s viewing of the study was audited within :data:`VIEW_AUDIT_WINDOW`.

    A read, so that a refreshing page costs no write transaction.
    """
    when = now or utcnow()
    recent = session.scalar(
        select(AuditEvent.id)
        .where(
            AuditEvent.object_uid == study_uid,
            AuditEvent.action == audit.Action.STUDY_VIEWED,
            AuditEvent.actor == actor.strip()[:128],
            AuditEvent.occurred_at >= when - VIEW_AUDIT_WINDOW,
        )
        .limit(1)
    )
    return recent is not None
