"""Spool retention: an instance's file may be pruned after triage while its row stays; the
reconciler's bounded attempts per study.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("pruned_at", UTC, nullable=True))
    with op.batch_alter_table("studies") as batch:
        batch.add_column(
            sa.Column("reconcile_attempts", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("reconcile_attempts")
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("pruned_at")
