"""The answerability reader: refusal_layer 'reader', its verdict per logged chunk, and what decided.

Each logged chunk gets the reader's P(answerable) for it and the evidence span's character offsets
(NULL where no reader ran or, for the older verifier, where it marks no span); each answer names the
answerability model (folder and weights digest) and the threshold that decided, so a flag can later
be turned into a reader label with the exact passages that were shown.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

NAME = "ck_answers_ck_answers_refusal_layer"  # as 0001 created it (see 0002)
BEFORE = "refusal_layer IS NULL OR refusal_layer IN ('retrieval_gate', 'verifier', 'model', 'grounding', 'threshold')"
AFTER = (
    "refusal_layer IS NULL OR refusal_layer IN "
    "('retrieval_gate', 'verifier', 'reader', 'model', 'grounding', 'threshold')"
)


def upgrade() -> None:
    with op.batch_alter_table("answers") as batch:
        batch.drop_constraint(op.f(NAME), type_="check")
        batch.create_check_constraint(op.f(NAME), AFTER)
        batch.add_column(sa.Column("answerability_model", sa.String(200), nullable=True))
        batch.add_column(sa.Column("answerability_threshold", sa.Float(), nullable=True))
    with op.batch_alter_table("answer_chunks") as batch:
        batch.add_column(sa.Column("answerable", sa.Float(), nullable=True))
        batch.add_column(sa.Column("evidence_start", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("evidence_end", sa.Integer(), nullable=True))


def downgrade() -> None:
    # answers refused by the reader would break the old constraint: record them as verifier refusals
    op.execute("UPDATE answers SET refusal_layer = 'verifier' WHERE refusal_layer = 'reader'")
    with op.batch_alter_table("answer_chunks") as batch:
        batch.drop_column("evidence_end")
        batch.drop_column("evidence_start")
        batch.drop_column("answerable")
    with op.batch_alter_table("answers") as batch:
        batch.drop_column("answerability_threshold")
        batch.drop_column("answerability_model")
        batch.drop_constraint(op.f(NAME), type_="check")
        batch.create_check_constraint(op.f(NAME), BEFORE)
