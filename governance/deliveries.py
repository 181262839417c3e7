"""Result deliveries in the store: SR/heatmap exports and flag notifications of triage events.

A delivery is one row per (event, destination, kind). Its life: ``pending`` -> ``sending``
(claimed by one results worker) -> ``sent``; a transient failure makes it ``retrying`` with an
exponential backoff (``next_attempt_at``); a permanent one, or the last attempt, parks it as
``failed`` with the reason, where a person sees it and may retry it. Nothing loops: every
attempt counts, and each row is claimed alone, so one stuck destination never holds another.

The sending itself is the ``results`` package's business; this module only keeps the books,
so the web and the CLI can list and retry deliveries without importing it.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, exists, or_, select, update
from sqlalchemy.orm import Session

from governance import audit
from governance.db import get_row
from governance.models import DeliveryKind, DeliveryState, ResultDelivery, TriageEvent, utcnow
from governance.text import column_limit

logger = logging.getLogger(__name__)

#: A claim older than this is taken to have died with its worker and may be claimed again.
CLAIM_LEASE_S = 300.0


@dataclass(frozen=True, slots=True)
class Target:
    """Something to deliver for each event: a destination's name and what it gets."""

    destination: str
    kind: str
    max_attempts: int


def plan(session: Session, event: TriageEvent, targets: list[Target]) -> list[int]:
    """Create the event's missing delivery rows; the ids of all of its rows for ``targets``.

    Idempotent: a row that exists is kept as it is (a redelivered message, a sweep).
    """
    existing = {
        (row.destination, row.kind): row.id
        for row in session.scalars(
            select(ResultDelivery).where(ResultDelivery.event_id == event.id)
        )
    }
    ids: list[int] = []
    for target in targets:
        key = (target.destination, target.kind)
        if key in existing:
            ids.append(existing[key])
            continue
        row = ResultDelivery(
            event_id=event.id,
            study_id=event.study_id,
            study_instance_uid=event.study_instance_uid,
            destination=target.destination,
            kind=target.kind,
            state=DeliveryState.PENDING,
            attempts=0,
            max_attempts=target.max_attempts,
        )
        session.add(row)
        session.flush()
        ids.append(row.id)
    return ids


def events_without_deliveries(
    session: Session, *, since: dt.datetime, after_id: int = 0, limit: int = 100
) -> list[int]:
    """Ids of events since ``since`` (and above ``after_id``) that have no delivery row yet:
    their message was lost, or they need none (planning them again costs a query)."""
    has_rows = exists().where(ResultDelivery.event_id == TriageEvent.id)
    return list(
        session.scalars(
            select(TriageEvent.id)
            .where(TriageEvent.created_at >= since, TriageEvent.id > after_id, ~has_rows)
            .order_by(TriageEvent.id)
            .limit(limit)
        )
    )


def _claimable(now: dt.datetime, lease_s: float):  # type: ignore[no-untyped-def]
    stale = now - dt.timedelta(seconds=lease_s)
    return or_(
        and_(
            ResultDelivery.state.in_((DeliveryState.PENDING, DeliveryState.RETRYING)),
            or_(ResultDelivery.next_attempt_at.is_(None), ResultDelivery.next_attempt_at <= now),
        ),
        and_(ResultDelivery.state == DeliveryState.SENDING, ResultDelivery.claimed_at < stale),
    )


def due(
    session: Session, *, now: dt.datetime | None = None, lease_s: float = CLAIM_LEASE_S, limit=100
) -> list[int]:
    """Ids of deliveries that may be tried now (new, due for a retry, or a stale claim)."""
    now = now or utcnow()
    return list(
        session.scalars(
            select(ResultDelivery.id)
            .where(_claimable(now, lease_s))
            .order_by(ResultDelivery.id)
            .limit(limit)
        )
    )


def claim(
    session: Session, delivery_id: int, *, lease_s: float = CLAIM_LEASE_S
) -> ResultDelivery | None:
    """Take one delivery for an attempt (counted now), or None if it is not claimable.

    A conditional UPDATE: of two workers racing for a row, exactly one gets it.
    """
    now = utcnow()
    result = session.execute(
        update(ResultDelivery)
        .where(ResultDelivery.id == delivery_id, _claimable(now, lease_s))
        .values(
            state=DeliveryState.SENDING,
            claimed_at=now,
            attempts=ResultDelivery.attempts + 1,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    row = session.get(ResultDelivery, delivery_id, populate_existing=True)
    return row


def backoff_s(attempts: int, base_s: float, cap_s: float = 3600.0) -> float:
    """Exponential backoff before attempt ``attempts + 1``: base, 2 base, 4 base... capped."""
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    return float(min(cap_s, base_s * 2 ** (attempts - 1)))


def record_sent(session: Session, delivery_id: int, *, actor: str, detail: dict) -> None:  # type: ignore[type-arg]
    row = _get(session, delivery_id)
    row.state = DeliveryState.SENT
    row.sent_at = utcnow()
    row.claimed_at = None
    row.next_attempt_at = None
    _audit_attempt(session, row, actor=actor, outcome=audit.Outcome.SUCCESS, detail=detail)


def record_failure(
    session: Session,
    delivery_id: int,
    *,
    error: str,
    transient: bool,
    backoff_base_s: float,
    actor: str,
) -> str:
    """Record a failed attempt: ``retrying`` with a backoff, or ``failed`` (parked). The state."""
    row = _get(session, delivery_id)
    row.last_error = error[: column_limit(ResultDelivery.last_error)]
    row.claimed_at = None
    if transient and row.attempts < row.max_attempts:
        row.state = DeliveryState.RETRYING
        row.next_attempt_at = utcnow() + dt.timedelta(
            seconds=backoff_s(row.attempts, backoff_base_s)
        )
    else:
        row.state = DeliveryState.FAILED
        row.next_attempt_at = None
        _audit_attempt(
            session,
            row,
            actor=actor,
            outcome=audit.Outcome.FAILURE,
            detail={"error": row.last_error, "transient": transient},
        )
    return row.state


def _audit_attempt(
    session: Session,
    row: ResultDelivery,
    *,
    actor: str,
    outcome: str,
    detail: dict[str, Any],
) -> None:
    """Audit the last attempt of a delivery: an export sent (or not), a notification."""
    dicom = row.kind in DeliveryKind.DICOM
    action = audit.Action.INSTANCES_EXPORTED if dicom else audit.Action.NOTIFICATION_SENT
    _audit(
        session,
        row,
        action,
        actor=actor,
        outcome=outcome,
        detail={"event_id": row.event_id, "attempts": row.attempts, **detail},
    )


def _audit(
    session: Session,
    row: ResultDelivery,
    action: audit.Action,
    *,
    actor: str,
    outcome: str = audit.Outcome.SUCCESS,
    detail: dict[str, Any] | None = None,
) -> None:
    """Audit something done to a delivery, as an event about its study."""
    audit.record(
        session,
        "study",
        row.study_instance_uid,
        actor=actor,
        action=action,
        outcome=outcome,
        detail={
            "delivery_id": row.id,
            "destination": row.destination,
            "kind": row.kind,
            **(detail or {}),
        },
    )


def _get(session: Session, delivery_id: int) -> ResultDelivery:
    return get_row(session, ResultDelivery, delivery_id, f"no result delivery {delivery_id}")


def list_deliveries(
    session: Session, *, state: str | None = None, limit: int = 100
) -> list[ResultDelivery]:
    """Newest first; only those in ``state`` when given."""
    if state is not None and state not in DeliveryState.ALL:
        raise ValueError(f"state must be one of {', '.join(DeliveryState.ALL)}, got {state!r}")
    query = select(ResultDelivery).order_by(ResultDelivery.id.desc()).limit(limit)
    if state is not None:
        query = query.where(ResultDelivery.state == state)
    return list(session.scalars(query))


def retry(session: Session, delivery_id: int, *, actor: str) -> ResultDelivery:
    """A person's retry of a parked (or retrying) delivery: a fresh set of attempts, now."""
    row = _get(session, delivery_id)
    if row.state not in (DeliveryState.FAILED, DeliveryState.RETRYING):
        raise ValueError(f"delivery {delivery_id} is {row.state}; only failed or retrying ones")
    row.state = DeliveryState.PENDING
    row.attempts = 0
    row.next_attempt_at = None
    row.claimed_at = None
    _audit(session, row, audit.Action.DELIVERY_RETRIED, actor=actor)
    return row


#: What a delivery's listing shows of its row (no patient identifiers: there are none in it).
LISTED_COLUMNS = (
    "id",
    "event_id",
    "study_instance_uid",
    "destination",
    "kind",
    "state",
    "attempts",
    "max_attempts",
    "last_error",
    "next_attempt_at",
    "sent_at",
    "sop_instance_uid",
)


def delivery_dict(row: ResultDelivery) -> dict[str, object]:
    """A row's :data:`LISTED_COLUMNS` as JSON-ready values (times in ISO 8601)."""
    return {
        name: value.isoformat() if isinstance(value, dt.datetime) else value
        for name, value in row.columns(*LISTED_COLUMNS).items()
    }
