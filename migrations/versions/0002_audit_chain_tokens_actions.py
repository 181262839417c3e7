"""Tamper-evident audit chain, API tokens, radiologist actions and patient pseudonyms.

- audit_events: ``prev_hash``/``row_hash`` chain each row to the one before (existing rows are
  chained here), and triggers refuse UPDATE and DELETE (and TRUNCATE on PostgreSQL). On SQLite a
  later batch migration of audit_events recreates the table and must recreate the triggers.
- api_tokens: role-bearing API tokens, stored as SHA-256 only.
- studies: a person's priority override, acknowledgement and final read, and a keyed
  pseudonym of the Patient ID.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC = sa.DateTime(timezone=True)

PG_FUNCTION = """
CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP;
END
$$
"""
PG_TRIGGERS = (
    "CREATE TRIGGER audit_events_no_change BEFORE UPDATE OR DELETE ON audit_events "
    "FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()",
    "CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events "
    "FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()",
)
SQLITE_TRIGGERS = (
    "CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events BEGIN "
    "SELECT RAISE(ABORT, 'audit_events is append-only: UPDATE refused'); END",
    "CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events BEGIN "
    "SELECT RAISE(ABORT, 'audit_events is append-only: DELETE refused'); END",
)


GENESIS_HASH = "0" * 64
AUDIT_EVENTS = sa.table(
    "audit_events",
    sa.column("id", sa.Integer),
    sa.column("occurred_at", UTC),
    sa.column("actor", sa.String),
    sa.column("actor_address", sa.String),
    sa.column("action", sa.String),
    sa.column("event_code", sa.String),
    sa.column("object_type", sa.String),
    sa.column("object_uid", sa.String),
    sa.column("outcome", sa.String),
    sa.column("detail", sa.JSON),
    sa.column("prev_hash", sa.String),
    sa.column("row_hash", sa.String),
)


def _row_hash(row: sa.Row[Any], prev_hash: str) -> str:
    """A frozen copy of ``AuditEvent.canonical``/``compute_hash`` as of this revision."""
    occurred = row.occurred_at
    if occurred.tzinfo is None:  # SQLite keeps UTC without its offset
        occurred = occurred.replace(tzinfo=dt.UTC)
    content = {
        "id": row.id,
        "occurred_at": occurred.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "actor": row.actor,
        "actor_address": row.actor_address,
        "action": row.action,
        "event_code": row.event_code,
        "object_type": row.object_type,
        "object_uid": row.object_uid,
        "outcome": row.outcome,
        "detail": row.detail or {},
        "prev_hash": prev_hash,
    }
    canonical = json.dumps(
        content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    ).encode("utf-8")
    return hashlib.sha256(canonical).hexdigest()


def _chain_existing_rows() -> None:
    bind = op.get_bind()
    prev = GENESIS_HASH
    rows = bind.execute(sa.select(AUDIT_EVENTS).order_by(AUDIT_EVENTS.c.id)).all()
    for row in rows:
        digest = _row_hash(row, prev)
        bind.execute(
            AUDIT_EVENTS.update()
            .where(AUDIT_EVENTS.c.id == row.id)
            .values(prev_hash=prev, row_hash=digest)
        )
        prev = digest


def upgrade() -> None:
    with op.batch_alter_table("audit_events") as batch_op:
        batch_op.add_column(sa.Column("prev_hash", sa.String(64), nullable=True))
        batch_op.add_column(sa.Column("row_hash", sa.String(64), nullable=True))
    _chain_existing_rows()
    with op.batch_alter_table("audit_events") as batch_op:
        batch_op.alter_column("prev_hash", existing_type=sa.String(64), nullable=False)
        batch_op.alter_column("row_hash", existing_type=sa.String(64), nullable=False)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_FUNCTION)
        for statement in PG_TRIGGERS:
            op.execute(statement)
    else:
        for statement in SQLITE_TRIGGERS:
            op.execute(statement)

    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("token_prefix", sa.String(12), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("revoked_at", UTC, nullable=True),
        sa.Column("last_used_at", UTC, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("name", name=op.f("uq_api_tokens_name")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )

    with op.batch_alter_table("studies") as batch_op:
        batch_op.add_column(sa.Column("patient_pseudonym", sa.String(64), nullable=True))
        batch_op.add_column(sa.Column("priority_override", sa.String(16), nullable=True))
        batch_op.add_column(sa.Column("override_reason", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("overridden_by", sa.String(128), nullable=True))
        batch_op.add_column(sa.Column("overridden_at", UTC, nullable=True))
        batch_op.add_column(sa.Column("acknowledged_by", sa.String(128), nullable=True))
        batch_op.add_column(sa.Column("acknowledged_at", UTC, nullable=True))
        batch_op.add_column(sa.Column("final_read", sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column("final_read_by", sa.String(128), nullable=True))
        batch_op.add_column(sa.Column("final_read_at", UTC, nullable=True))
        batch_op.create_index(op.f("ix_studies_patient_pseudonym"), ["patient_pseudonym"])


def downgrade() -> None:
    with op.batch_alter_table("studies") as batch_op:
        batch_op.drop_index(op.f("ix_studies_patient_pseudonym"))
        for column in (
            "final_read_at",
            "final_read_by",
            "final_read",
            "acknowledged_at",
            "acknowledged_by",
            "overridden_at",
            "overridden_by",
            "override_reason",
            "priority_override",
            "patient_pseudonym",
        ):
            batch_op.drop_column(column)
    op.drop_table("api_tokens")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_events_no_truncate ON audit_events")
        op.execute("DROP TRIGGER audit_events_no_change ON audit_events")
        op.execute("DROP FUNCTION audit_events_append_only()")
    else:
        op.execute("DROP TRIGGER audit_events_no_update")
        op.execute("DROP TRIGGER audit_events_no_delete")
    with op.batch_alter_table("audit_events") as batch_op:
        batch_op.drop_column("row_hash")
        batch_op.drop_column("prev_hash")
