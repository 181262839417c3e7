"""Monitoring: image features, drift runs and baselines, imported labels, recalibration jobs,
shadow policies and recalibrated policies.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC = sa.DateTime(timezone=True)


def _fk(
    table: str, column: str, target: str, ondelete: str | None = None
) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column],
        [f"{target}.id"],
        name=op.f(f"fk_{table}_{column}_{target}"),
        ondelete=ondelete,
    )


def upgrade() -> None:
    with op.batch_alter_table("threshold_policies") as batch:
        batch.add_column(sa.Column("mode", sa.String(8), server_default="live", nullable=False))
        batch.add_column(sa.Column("temperature", sa.Float(), nullable=True))
        batch.add_column(sa.Column("logit_shift", sa.Float(), nullable=True))
    with op.batch_alter_table("study_inferences") as batch:
        batch.add_column(
            sa.Column("shadow", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    op.create_index(
        "ix_study_inferences_model_finished",
        "study_inferences",
        ["model_version_id", "finished_at"],
    )
    with op.batch_alter_table("triage_events") as batch:
        batch.add_column(
            sa.Column("shadow", sa.Boolean(), server_default=sa.false(), nullable=False)
        )

    op.create_table(
        "image_features",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_inference_id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("probability", sa.Float(), nullable=True),
        sa.Column("img_mean", sa.Float(), nullable=True),
        sa.Column("img_std", sa.Float(), nullable=True),
        sa.Column("img_frac_zero", sa.Float(), nullable=True),
        sa.Column("img_frac_one", sa.Float(), nullable=True),
        sa.Column("manufacturer", sa.String(64), nullable=True),
        sa.Column("model_name", sa.String(64), nullable=True),
        sa.Column("view_position", sa.String(16), nullable=True),
        sa.Column("modality", sa.String(16), nullable=True),
        sa.Column("body_part", sa.String(64), nullable=True),
        sa.Column("pixel_spacing", sa.String(16), nullable=True),
        sa.Column("bits_stored", sa.String(8), nullable=True),
        sa.Column("photometric", sa.String(16), nullable=True),
        sa.Column("age_band", sa.String(8), nullable=True),
        sa.Column("sex", sa.String(1), nullable=True),
        sa.Column("calling_ae", sa.String(16), nullable=True),
        sa.Column("recorded_at", UTC, nullable=False),
        _fk("image_features", "image_inference_id", "image_inferences", "CASCADE"),
        _fk("image_features", "study_id", "studies", "CASCADE"),
        _fk("image_features", "model_version_id", "model_versions"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_image_features")),
        sa.UniqueConstraint(
            "image_inference_id", name=op.f("uq_image_features_image_inference_id")
        ),
    )
    op.create_index(op.f("ix_image_features_study_id"), "image_features", ["study_id"])
    op.create_index(
        "ix_image_features_model_recorded", "image_features", ["model_version_id", "recorded_at"]
    )

    op.create_table(
        "drift_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("window_key", sa.String(128), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("started_at", UTC, nullable=False),
        sa.Column("finished_at", UTC, nullable=True),
        sa.Column("window_start", UTC, nullable=True),
        sa.Column("window_end", UTC, nullable=True),
        sa.Column("n_studies", sa.Integer(), nullable=False),
        sa.Column("psi", sa.Float(), nullable=True),
        sa.Column("flag_rate", sa.Float(), nullable=True),
        sa.Column("expected_flag_rate", sa.Float(), nullable=True),
        sa.Column("alerted", sa.Boolean(), nullable=False),
        sa.Column("inputs", sa.JSON(), nullable=False),
        sa.Column("results", sa.JSON(), nullable=False),
        _fk("drift_runs", "model_version_id", "model_versions"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_drift_runs")),
        sa.UniqueConstraint("window_key", name=op.f("uq_drift_runs_window_key")),
    )
    op.create_index(op.f("ix_drift_runs_model_version_id"), "drift_runs", ["model_version_id"])

    op.create_table(
        "drift_baselines",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("starts_at", UTC, nullable=False),
        sa.Column("ends_at", UTC, nullable=False),
        sa.Column("pinned_by", sa.String(128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        _fk("drift_baselines", "model_version_id", "model_versions"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_drift_baselines")),
    )
    op.create_index(
        op.f("ix_drift_baselines_model_version_id"), "drift_baselines", ["model_version_id"]
    )

    op.create_table(
        "study_labels",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("label", sa.Boolean(), nullable=False),
        sa.Column("subgroups", sa.JSON(), nullable=False),
        sa.Column("source", sa.String(256), nullable=False),
        sa.Column("imported_by", sa.String(128), nullable=False),
        sa.Column("imported_at", UTC, nullable=False),
        _fk("study_labels", "study_id", "studies", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_study_labels")),
        sa.UniqueConstraint("study_id", name=op.f("uq_study_labels_study_id")),
    )

    op.create_table(
        "recalibration_jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("base_policy_id", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(24), nullable=False),
        sa.Column("trigger", sa.String(32), nullable=False),
        sa.Column("window_key", sa.String(128), nullable=True),
        sa.Column("labels_used", sa.Integer(), nullable=False),
        sa.Column("labels_needed", sa.Integer(), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("candidate_temperature", sa.Float(), nullable=True),
        sa.Column("candidate_logit_shift", sa.Float(), nullable=True),
        sa.Column("candidate_tau", sa.Float(), nullable=True),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("started_at", UTC, nullable=True),
        sa.Column("finished_at", UTC, nullable=True),
        sa.Column("decided_by", sa.String(128), nullable=True),
        sa.Column("decided_at", UTC, nullable=True),
        sa.Column("decision_reason", sa.Text(), nullable=True),
        sa.Column("new_policy_id", sa.Integer(), nullable=True),
        _fk("recalibration_jobs", "model_version_id", "model_versions"),
        _fk("recalibration_jobs", "base_policy_id", "threshold_policies"),
        _fk("recalibration_jobs", "new_policy_id", "threshold_policies"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recalibration_jobs")),
        sa.UniqueConstraint("window_key", name=op.f("uq_recalibration_jobs_window_key")),
    )
    op.create_index(
        op.f("ix_recalibration_jobs_model_version_id"), "recalibration_jobs", ["model_version_id"]
    )


def downgrade() -> None:
    op.drop_table("recalibration_jobs")
    op.drop_table("study_labels")
    op.drop_table("drift_baselines")
    op.drop_table("drift_runs")
    op.drop_table("image_features")
    with op.batch_alter_table("triage_events") as batch:
        batch.drop_column("shadow")
    op.drop_index("ix_study_inferences_model_finished", table_name="study_inferences")
    with op.batch_alter_table("study_inferences") as batch:
        batch.drop_column("shadow")
    with op.batch_alter_table("threshold_policies") as batch:
        batch.drop_column("logit_shift")
        batch.drop_column("temperature")
        batch.drop_column("mode")
