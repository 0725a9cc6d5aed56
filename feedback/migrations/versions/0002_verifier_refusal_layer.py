"""Answers may be refused by the answerability verifier: allow refusal_layer 'verifier'.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# the name 0001 created (the naming convention was applied to an already prefixed name); op.f keeps it as is
NAME = "ck_answers_ck_answers_refusal_layer"
BEFORE = "refusal_layer IS NULL OR refusal_layer IN ('retrieval_gate', 'model', 'grounding', 'threshold')"
AFTER = "refusal_layer IS NULL OR refusal_layer IN ('retrieval_gate', 'verifier', 'model', 'grounding', 'threshold')"


def _replace(condition: str) -> None:
    with op.batch_alter_table("answers") as batch:
        batch.drop_constraint(op.f(NAME), type_="check")
        batch.create_check_constraint(op.f(NAME), condition)


def upgrade() -> None:
    _replace(AFTER)


def downgrade() -> None:
    # answers refused by the verifier would break the old constraint: record them as threshold refusals
    op.execute("UPDATE answers SET refusal_layer = 'threshold' WHERE refusal_layer = 'verifier'")
    _replace(BEFORE)
