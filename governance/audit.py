"""The audit trail: who did what to which object, when, and how it ended.

Events carry DICOM PS3.15 A.5 event codes where one fits. The application only inserts rows;
it never updates or deletes one. Details hold UIDs, AE titles and figures, never patient
identifiers.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from governance.models import GENESIS_HASH, AuditEvent, utcnow

logger = logging.getLogger(__name__)


class Action:
    """Audit actions; the DICOM event code (PS3.15 A.5.3) where one fits."""

    INSTANCES_RECEIVED = "instances_received"  # 110104 DICOM Instances Transferred
    ASSOCIATION_REFUSED = "association_refused"  # 110113 Security Alert
    STUDY_TRIAGED = "study_triaged"
    STUDY_FLAGGED = "study_flagged"
    MODEL_REGISTERED = "model_registered"
    MODEL_ACTIVATED = "model_activated"  # 110100 Application Activity (configuration)
    POLICY_SET = "policy_set"  # 110100 Application Activity (configuration)
    APPLICATION_START = "application_start"  # 110100
    APPLICATION_STOP = "application_stop"  # 110100


EVENT_CODES = {
    Action.INSTANCES_RECEIVED: "110104",
    Action.ASSOCIATION_REFUSED: "110113",
    Action.MODEL_ACTIVATED: "110100",
    Action.POLICY_SET: "110100",
    Action.APPLICATION_START: "110100",
    Action.APPLICATION_STOP: "110100",
}


def record(
    session: Session,
    *,
    actor: str,
    action: str,
    object_uid: str | None = None,
    object_type: str | None = None,
    outcome: str = "success",
    detail: dict[str, Any] | None = None,
    actor_address: str | None = None,
    occurred_at: dt.datetime | None = None,
) -> AuditEvent:
    """Add one audit event to the session's transaction (committed with the change it records).

    The event is chained to the newest row: it takes the next id and the previous row's hash,
    and its own hash covers both (see :meth:`AuditEvent.canonical`). Writers are serialised
    while they chain: SQLite write transactions already are (BEGIN IMMEDIATE); on PostgreSQL a
    transaction-level advisory lock does it, released at commit.
    """
    _lock_chain(session)
    last = session.execute(
        select(AuditEvent.id, AuditEvent.row_hash).order_by(AuditEvent.id.desc()).limit(1)
    ).first()
    prev_hash = last.row_hash if last else GENESIS_HASH
    event = AuditEvent(
        id=(last.id + 1) if last else 1,
        occurred_at=occurred_at or utcnow(),
        actor=actor,
        actor_address=actor_address,
        action=action,
        event_code=EVENT_CODES.get(action),
        object_type=object_type,
        object_uid=object_uid,
        outcome=outcome,
        detail=detail or {},
        prev_hash=prev_hash,
    )
    event.row_hash = event.compute_hash(prev_hash)
    session.add(event)
    session.flush()
    return event


AUDIT_LOCK_KEY = 0x63787261  # "cxra": any constant shared by every writer


def _lock_chain(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": AUDIT_LOCK_KEY})
