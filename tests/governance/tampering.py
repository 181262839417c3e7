"""What a database administrator could do to the audit trail, to prove that verify catches it.

The application cannot change audit rows: triggers refuse UPDATE and DELETE. An administrator
can get past them, as these helpers do: on SQLite by dropping the triggers, on PostgreSQL by
disabling them for the statement's transaction (the test user is a superuser).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select, text
from sqlalchemy.orm import Session

from governance.db import create_store_engine
from governance.models import AuditEvent


def as_admin(url: str, work: Any) -> None:
    """Run ``work(connection)`` with the append-only triggers out of the way."""
    engine = create_store_engine(url)
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(text("ALTER TABLE audit_events DISABLE TRIGGER USER"))
            else:
                conn.execute(text("DROP TRIGGER IF EXISTS audit_events_no_update"))
                conn.execute(text("DROP TRIGGER IF EXISTS audit_events_no_delete"))
            work(conn)
            if engine.dialect.name == "postgresql":
                conn.execute(text("ALTER TABLE audit_events ENABLE TRIGGER USER"))
    finally:
        engine.dispose()


def edit(url: str, event_id: int, **values: Any) -> None:
    """Change columns of one row in place (its hashes left as they were)."""

    def work(conn: Connection) -> None:
        session = Session(bind=conn)
        event = session.get(AuditEvent, event_id)
        assert event is not None, event_id
        for name, value in values.items():
            setattr(event, name, value)
        session.flush()

    as_admin(url, work)


def delete(url: str, *event_ids: int) -> None:
    def work(conn: Connection) -> None:
        for event_id in event_ids:
            conn.execute(text("DELETE FROM audit_events WHERE id = :id"), {"id": event_id})

    as_admin(url, work)


def swap(url: str, first: int, second: int) -> None:
    """Exchange the contents of two rows: each id now holds the other's event."""

    def work(conn: Connection) -> None:
        move = text("UPDATE audit_events SET id = :new WHERE id = :old")
        conn.execute(move, {"new": -1, "old": first})
        conn.execute(move, {"new": first, "old": second})
        conn.execute(move, {"new": second, "old": -1})

    as_admin(url, work)


def rewrite_from(
    url: str, event_id: int, *, key: bytes | None = None, unkeyed: bool = False, **values: Any
) -> None:
    """Edit one row and recompute every hash from it on: a chain that checks out on its own.

    Hashes are recomputed with ``key`` (a guess: the real one is not in the database) or, with
    ``unkeyed``, as plain SHA-256 rows (``hash_scheme`` cleared).
    """

    def work(conn: Connection) -> None:
        session = Session(bind=conn)
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.id >= event_id).order_by(AuditEvent.id)
        ).all()
        for name, value in values.items():
            setattr(events[0], name, value)
        prev = events[0].prev_hash
        for event in events:
            event.prev_hash = prev
            if unkeyed:
                event.hash_scheme = None
            event.row_hash = event.compute_hash(prev, None if unkeyed else key)
            prev = event.row_hash
        session.flush()

    as_admin(url, work)
