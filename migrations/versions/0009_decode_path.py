"""Which decoder read each scored image's pixels (e.g. ``full``, ``j2k-r3`` for JPEG 2000 at
reduce factor 3), so a score can be traced to how its pixels were decoded.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("image_inferences") as batch:
        batch.add_column(sa.Column("decode_path", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("image_inferences") as batch:
        batch.drop_column("decode_path")
