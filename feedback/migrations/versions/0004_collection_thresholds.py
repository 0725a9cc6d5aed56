"""Per-collection refusal thresholds, calibrated from reviewed flags (``candor calibrate``).

One row per collection: the threshold, the answerability model it was calibrated on, where it came from
(``calibration`` by a person, ``loop`` by ``candor retrain``), how many flags, and the trade-off it chose.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from candor.feedback.models import JSONType, UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "collection_thresholds",
        sa.Column("collection", sa.String(200), nullable=False),
        sa.Column("layer", sa.String(32), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("flags", sa.Integer(), nullable=False),
        sa.Column("over_refusal", sa.Float(), nullable=False),
        sa.Column("hallucination_rate", sa.Float(), nullable=False),
        sa.Column("detail", JSONType, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=True),
        sa.CheckConstraint("threshold >= 0 AND threshold <= 1", name=op.f("ck_collection_thresholds_threshold")),
        sa.CheckConstraint("source IN ('calibration', 'loop')", name=op.f("ck_collection_thresholds_source")),
        sa.PrimaryKeyConstraint("collection", name=op.f("pk_collection_thresholds")),
    )


def downgrade() -> None:
    op.drop_table("collection_thresholds")
