"""Read what a test needs to see in the store."""

from __future__ import annotations

from sqlalchemy import select

from governance.db import Store
from governance.models import AuditEvent


def audit_events(store: Store, action: str) -> list[AuditEvent]:
    """The audit events of one action, oldest first (detached: usable after the session)."""
    with store.read() as session:
        events = list(
            session.scalars(
                select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)
            )
        )
        session.expunge_all()  # keep the loaded values past the read session's rollback
        return events
