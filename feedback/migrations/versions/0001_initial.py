"""The answer log: API keys, answers, their retrieved chunks, flags.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from candor.feedback.models import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(26), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("collections", JSONType, nullable=True),
        sa.Column("trusted", sa.Boolean(), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.CheckConstraint("role IN ('user', 'admin')", name="ck_api_keys_role"),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("secret_hash", name="uq_api_keys_secret_hash"),
    )
    op.create_table(
        "answers",
        sa.Column("id", sa.String(26), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("question", sa.Text(), nullable=False),
        sa.Column("collection", sa.String(200), nullable=False),
        sa.Column("history", JSONType, nullable=False),
        sa.Column("history_in_prompt", sa.Integer(), nullable=True),
        sa.Column("retrieval_query", sa.Text(), nullable=True),
        sa.Column("prompt_version", sa.String(64), nullable=True),
        sa.Column("rendered_prompt", sa.Text(), nullable=True),
        sa.Column("model_base", sa.String(500), nullable=True),
        sa.Column("adapter", sa.String(200), nullable=True),
        sa.Column("adapter_version", sa.String(128), nullable=True),
        sa.Column("answer", sa.Text(), nullable=True),
        sa.Column("raw_answer", sa.Text(), nullable=True),
        sa.Column("refused", sa.Boolean(), nullable=True),
        sa.Column("refusal_layer", sa.String(32), nullable=True),
        sa.Column("refusal_confidence", sa.Float(), nullable=True),
        sa.Column("grounded", sa.Boolean(), nullable=True),
        sa.Column("grounding_support", sa.Float(), nullable=True),
        sa.Column("retrieval_ms", sa.Float(), nullable=True),
        sa.Column("generation_ms", sa.Float(), nullable=True),
        sa.Column("total_ms", sa.Float(), nullable=True),
        sa.Column("api_key_id", sa.String(26), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("meta", JSONType, nullable=False),
        sa.CheckConstraint("status IN ('ok', 'failed')", name="ck_answers_status"),
        sa.CheckConstraint(
            "refusal_layer IS NULL OR refusal_layer IN ('retrieval_gate', 'model', 'grounding', 'threshold')",
            name="ck_answers_refusal_layer",
        ),
        sa.ForeignKeyConstraint(["api_key_id"], ["api_keys.id"], name="fk_answers_api_key_id_api_keys"),
        sa.PrimaryKeyConstraint("id", name="pk_answers"),
    )
    op.create_index("ix_answers_created_at", "answers", ["created_at"])
    op.create_index("ix_answers_api_key_id", "answers", ["api_key_id"])
    op.create_index("ix_answers_collection_id", "answers", ["collection", "id"])
    op.create_index("ix_answers_adapter_version", "answers", ["adapter", "adapter_version"])

    op.create_table(
        "answer_chunks",
        sa.Column("answer_id", sa.String(26), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("chunk_id", sa.String(200), nullable=False),
        sa.Column("doc_id", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("title", sa.Text(), nullable=True),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("prompt_text", sa.Text(), nullable=True),
        sa.Column("text_sha256", sa.String(64), nullable=False),
        sa.ForeignKeyConstraint(
            ["answer_id"], ["answers.id"], name="fk_answer_chunks_answer_id_answers", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("answer_id", "rank", name="pk_answer_chunks"),
    )

    op.create_table(
        "flags",
        sa.Column("id", sa.String(26), nullable=False),
        sa.Column("answer_id", sa.String(26), nullable=False),
        sa.Column("api_key_id", sa.String(26), nullable=True),
        sa.Column("flagger", sa.String(26), nullable=False),
        sa.Column("verdict", sa.String(32), nullable=False),
        sa.Column("correction", sa.Text(), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("review_status", sa.String(16), nullable=False),
        sa.Column("reviewed_by", sa.String(200), nullable=True),
        sa.Column("reviewed_at", UTCDateTime(), nullable=True),
        sa.Column("review_note", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "verdict IN ('hallucination', 'correct', 'should_have_refused', 'wrong_refusal')",
            name="ck_flags_verdict",
        ),
        sa.CheckConstraint("review_status IN ('pending', 'approved', 'rejected')", name="ck_flags_review_status"),
        sa.ForeignKeyConstraint(["answer_id"], ["answers.id"], name="fk_flags_answer_id_answers", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["api_key_id"], ["api_keys.id"], name="fk_flags_api_key_id_api_keys"),
        sa.PrimaryKeyConstraint("id", name="pk_flags"),
        sa.UniqueConstraint("answer_id", "flagger", name="uq_flags_answer_id_flagger"),
    )
    op.create_index("ix_flags_api_key_id", "flags", ["api_key_id"])
    op.create_index("ix_flags_review_status_id", "flags", ["review_status", "id"])


def downgrade() -> None:
    op.drop_table("flags")
    op.drop_table("answer_chunks")
    op.drop_table("answers")
    op.drop_table("api_keys")
