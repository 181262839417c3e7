"""Web sessions, the keyed audit chain and the application role's privileges.

- web_sessions: a login is a server-side session; the cookie holds a random id of which the
  store keeps only the SHA-256, with idle and absolute expiry, ended by logout or by revoking
  its token.
- audit_events.hash_scheme: NULL for rows hashed with plain SHA-256 (before this revision, or
  written without a key), ``hmac-sha256`` for rows keyed with the site's audit key, which the
  database does not hold. A plain ADD COLUMN keeps the append-only triggers (no batch copy).
- On PostgreSQL, when an application role is configured (``CXR_DATABASE_URL``'s user differs
  from the migrating owner's), it gets only the DML it needs: INSERT and SELECT on
  audit_events (see ``migrations.roles``).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from migrations.roles import grant_app_role

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "web_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_hash", sa.String(64), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=False),
        sa.Column("actor_address", sa.String(64), nullable=True),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("last_seen_at", UTC, nullable=False),
        sa.Column("expires_at", UTC, nullable=False),
        sa.Column("ended_at", UTC, nullable=True),
        sa.Column("ended_reason", sa.String(32), nullable=True),
        sa.ForeignKeyConstraint(
            ["token_id"],
            ["api_tokens.id"],
            name=op.f("fk_web_sessions_token_id_api_tokens"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_web_sessions")),
        sa.UniqueConstraint("session_hash", name=op.f("uq_web_sessions_session_hash")),
    )
    op.create_index(op.f("ix_web_sessions_token_id"), "web_sessions", ["token_id"])
    op.add_column("audit_events", sa.Column("hash_scheme", sa.String(16), nullable=True))
    role = context.config.attributes.get("app_role")
    if role:
        grant_app_role(op.get_bind(), str(role))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_column("audit_events", "hash_scheme")
    else:
        # SQLite >= 3.35 drops a column in place, keeping the triggers.
        op.execute("ALTER TABLE audit_events DROP COLUMN hash_scheme")
    op.drop_index(op.f("ix_web_sessions_token_id"), table_name="web_sessions")
    op.drop_table("web_sessions")
