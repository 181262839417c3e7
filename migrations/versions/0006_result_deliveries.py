"""Result deliveries: one row per SR/heatmap export and flag notification of a triage event,
with its state, attempts, last error and next attempt (retries, then parked as failed); and the
studies' worklist fields (accession number, study date and description; kept only where the
site sets CXR_WORKLIST_PHI).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC = sa.DateTime(timezone=True)
UID = sa.String(64)


def upgrade() -> None:
    # Worklist fields (CXR_WORKLIST_PHI): PHI the gateway keeps only where the site asks.
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("accession_number", sa.String(16), nullable=True))
        batch.add_column(sa.Column("study_date", sa.String(8), nullable=True))
        batch.add_column(sa.Column("study_description", sa.String(64), nullable=True))
    op.create_table(
        "result_deliveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("study_instance_uid", UID, nullable=False),
        sa.Column("destination", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(500), nullable=True),
        sa.Column("next_attempt_at", UTC, nullable=True),
        sa.Column("claimed_at", UTC, nullable=True),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("sent_at", UTC, nullable=True),
        sa.Column("sop_class_uid", UID, nullable=True),
        sa.Column("sop_instance_uid", UID, nullable=True),
        sa.Column("series_instance_uid", UID, nullable=True),
        sa.Column("path", sa.String(1024), nullable=True),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["triage_events.id"],
            name=op.f("fk_result_deliveries_event_id_triage_events"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["studies.id"],
            name=op.f("fk_result_deliveries_study_id_studies"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_result_deliveries")),
        sa.UniqueConstraint(
            "event_id", "destination", "kind", name=op.f("uq_result_deliveries_event_id")
        ),
    )
    op.create_index(op.f("ix_result_deliveries_event_id"), "result_deliveries", ["event_id"])
    op.create_index(op.f("ix_result_deliveries_study_id"), "result_deliveries", ["study_id"])
    op.create_index(
        "ix_result_deliveries_state_next_attempt_at",
        "result_deliveries",
        ["state", "next_attempt_at"],
    )


def downgrade() -> None:
    op.drop_index("ix_result_deliveries_state_next_attempt_at", table_name="result_deliveries")
    op.drop_index(op.f("ix_result_deliveries_study_id"), table_name="result_deliveries")
    op.drop_index(op.f("ix_result_deliveries_event_id"), table_name="result_deliveries")
    op.drop_table("result_deliveries")
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("study_description")
        batch.drop_column("study_date")
        batch.drop_column("accession_number")
