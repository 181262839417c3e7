"""Initial schema: studies, instances, inferences, model versions, policies, audit events.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC = sa.DateTime(timezone=True)
UID = sa.String(64)


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("occurred_at", UTC, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("actor_address", sa.String(64), nullable=True),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("event_code", sa.String(16), nullable=True),
        sa.Column("object_type", sa.String(32), nullable=True),
        sa.Column("object_uid", sa.String(128), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    op.create_index("ix_audit_events_object_uid", "audit_events", ["object_uid"])
    op.create_index("ix_audit_events_occurred_at", "audit_events", ["occurred_at"])

    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("architecture", sa.String(32), nullable=False),
        sa.Column("input_size", sa.Integer(), nullable=False),
        sa.Column("temperature", sa.Float(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("clinical", sa.Boolean(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("registered_at", UTC, nullable=False),
        sa.Column("activated_at", UTC, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
        sa.UniqueConstraint("version", name=op.f("uq_model_versions_version")),
    )

    op.create_table(
        "studies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_instance_uid", UID, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_detail", sa.Text(), nullable=True),
        sa.Column("first_received_at", UTC, nullable=False),
        sa.Column("last_received_at", UTC, nullable=False),
        sa.Column("queued_at", UTC, nullable=True),
        sa.Column("triaged_at", UTC, nullable=True),
        sa.Column("patient_sex", sa.String(1), nullable=True),
        sa.Column("patient_age_years", sa.Integer(), nullable=True),
        # Points at study_inferences, created below; its foreign key is added after that table.
        sa.Column("result_id", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_studies")),
        sa.UniqueConstraint("study_instance_uid", name=op.f("uq_studies_study_instance_uid")),
    )

    op.create_table(
        "instances",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", UID, nullable=False),
        sa.Column("sop_class_uid", UID, nullable=False),
        sa.Column("series_instance_uid", UID, nullable=True),
        sa.Column("transfer_syntax_uid", UID, nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("modality", sa.String(16), nullable=True),
        sa.Column("view_position", sa.String(16), nullable=True),
        sa.Column("body_part", sa.String(64), nullable=True),
        sa.Column("manufacturer", sa.String(64), nullable=True),
        sa.Column("calling_ae", sa.String(16), nullable=False),
        sa.Column("peer_address", sa.String(64), nullable=True),
        sa.Column("received_at", UTC, nullable=False),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["studies.id"],
            name=op.f("fk_instances_study_id_studies"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instances")),
        sa.UniqueConstraint("sop_instance_uid", name=op.f("uq_instances_sop_instance_uid")),
    )
    op.create_index(op.f("ix_instances_study_id"), "instances", ["study_id"])

    op.create_table(
        "threshold_policies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("operating_point", sa.String(16), nullable=False),
        sa.Column("tau", sa.Float(), nullable=False),
        sa.Column("target_metric", sa.String(64), nullable=True),
        sa.Column("validation", sa.JSON(), nullable=False),
        sa.Column("rationale", sa.Text(), nullable=False),
        sa.Column("approved_by", sa.String(128), nullable=False),
        sa.Column("effective_from", UTC, nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_threshold_policies_model_version_id_model_versions"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_threshold_policies")),
        sa.UniqueConstraint(
            "model_version_id", "version", name=op.f("uq_threshold_policies_model_version_id")
        ),
    )
    op.create_index(
        op.f("ix_threshold_policies_model_version_id"), "threshold_policies", ["model_version_id"]
    )

    op.create_table(
        "image_inferences",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("instance_id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("model_sha256", sa.String(64), nullable=False),
        sa.Column("probability", sa.Float(), nullable=True),
        sa.Column("logit", sa.Float(), nullable=True),
        sa.Column("skipped_reason", sa.String(256), nullable=True),
        sa.Column("started_at", UTC, nullable=False),
        sa.Column("decoded_at", UTC, nullable=True),
        sa.Column("preprocessed_at", UTC, nullable=True),
        sa.Column("inferred_at", UTC, nullable=True),
        sa.ForeignKeyConstraint(
            ["instance_id"],
            ["instances.id"],
            name=op.f("fk_image_inferences_instance_id_instances"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_image_inferences_model_version_id_model_versions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_image_inferences")),
        sa.UniqueConstraint(
            "instance_id", "model_version_id", name=op.f("uq_image_inferences_instance_id")
        ),
    )
    op.create_index(
        op.f("ix_image_inferences_model_version_id"), "image_inferences", ["model_version_id"]
    )

    op.create_table(
        "study_inferences",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("model_sha256", sa.String(64), nullable=False),
        sa.Column("policy_id", sa.Integer(), nullable=True),
        sa.Column("policy_version", sa.Integer(), nullable=True),
        sa.Column("tau", sa.Float(), nullable=True),
        sa.Column("probability", sa.Float(), nullable=True),
        sa.Column("logit", sa.Float(), nullable=True),
        sa.Column("flagged", sa.Boolean(), nullable=False),
        sa.Column("images_scored", sa.Integer(), nullable=False),
        sa.Column("images_skipped", sa.Integer(), nullable=False),
        sa.Column("queued_at", UTC, nullable=True),
        sa.Column("started_at", UTC, nullable=False),
        sa.Column("finished_at", UTC, nullable=False),
        sa.Column("runs", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_study_inferences_model_version_id_model_versions"),
        ),
        sa.ForeignKeyConstraint(
            ["policy_id"],
            ["threshold_policies.id"],
            name=op.f("fk_study_inferences_policy_id_threshold_policies"),
        ),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["studies.id"],
            name=op.f("fk_study_inferences_study_id_studies"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_study_inferences")),
        sa.UniqueConstraint(
            "study_id", "model_version_id", name=op.f("uq_study_inferences_study_id")
        ),
    )
    op.create_index(
        op.f("ix_study_inferences_model_version_id"), "study_inferences", ["model_version_id"]
    )

    with op.batch_alter_table("studies") as batch_op:
        batch_op.create_foreign_key(
            op.f("fk_studies_result_id_study_inferences"),
            "study_inferences",
            ["result_id"],
            ["id"],
            ondelete="SET NULL",
        )


def downgrade() -> None:
    with op.batch_alter_table("studies") as batch_op:
        batch_op.drop_constraint(op.f("fk_studies_result_id_study_inferences"), type_="foreignkey")
    op.drop_table("study_inferences")
    op.drop_table("image_inferences")
    op.drop_table("threshold_policies")
    op.drop_table("instances")
    op.drop_table("studies")
    op.drop_table("model_versions")
    op.drop_table("audit_events")
