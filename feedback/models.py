"""The answer log's tables (SQLAlchemy 2 typed ORM).

Only the store's modules use these; callers get the pydantic models of
``schemas.py``. Any change here needs a new migration in ``migrations/versions``
(a test compares the migrated schema with this metadata).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ID = String(26)
JSONType = JSON().with_variant(JSONB(), "postgresql")
NO_KEY = ""  # the `flagger` of flags given without an API key (auth disabled)


class UTCDateTime(TypeDecorator[datetime]):
    """Naive UTC in the database (SQLite has no time zones), aware UTC in Python."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the answer store: pass an aware UTC datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    collections: Mapped[list[str] | None] = mapped_column(JSONType, nullable=True)
    trusted: Mapped[bool] = mapped_column(Boolean)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (CheckConstraint("role IN ('user', 'admin')", name="role"),)


class AnswerRow(Base):
    __tablename__ = "answers"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    status: Mapped[str] = mapped_column(String(16))
    question: Mapped[str] = mapped_column(Text)
    collection: Mapped[str] = mapped_column(String(200))
    history: Mapped[list[dict[str, str]]] = mapped_column(JSONType)
    history_in_prompt: Mapped[int | None] = mapped_column(Integer, nullable=True)
    retrieval_query: Mapped[str | None] = mapped_column(Text, nullable=True)
    prompt_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    rendered_prompt: Mapped[str | None] = mapped_column(Text, nullable=True)
    model_base: Mapped[str | None] = mapped_column(String(500), nullable=True)
    adapter: Mapped[str | None] = mapped_column(String(200), nullable=True)
    adapter_version: Mapped[str | None] = mapped_column(String(128), nullable=True)
    answer: Mapped[str | None] = mapped_column(Text, nullable=True)
    raw_answer: Mapped[str | None] = mapped_column(Text, nullable=True)
    refused: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    refusal_layer: Mapped[str | None] = mapped_column(String(32), nullable=True)
    refusal_confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    grounded: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    grounding_support: Mapped[float | None] = mapped_column(Float, nullable=True)
    answerability_model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    answerability_threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    retrieval_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    generation_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    total_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    api_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id"), nullable=True, index=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    meta: Mapped[dict[str, Any]] = mapped_column(JSONType)

    chunks: Mapped[list[ChunkRow]] = relationship(
        back_populates="answer",
        order_by="ChunkRow.rank",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )
    flags: Mapped[list[FlagRow]] = relationship(
        back_populates="answer",
        order_by="FlagRow.id",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )

    __table_args__ = (
        CheckConstraint("status IN ('ok', 'failed')", name="status"),
        CheckConstraint(
            "refusal_layer IS NULL OR refusal_layer IN "
            "('retrieval_gate', 'verifier', 'reader', 'model', 'grounding', 'threshold')",
            name="refusal_layer",
        ),
        Index("ix_answers_collection_id", "collection", "id"),
        Index("ix_answers_adapter_version", "adapter", "adapter_version"),
    )


class ChunkRow(Base):
    __tablename__ = "answer_chunks"

    answer_id: Mapped[str] = mapped_column(ForeignKey("answers.id", ondelete="CASCADE"), primary_key=True)
    rank: Mapped[int] = mapped_column(Integer, primary_key=True)
    chunk_id: Mapped[str] = mapped_column(String(200))
    doc_id: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(Text)
    title: Mapped[str | None] = mapped_column(Text, nullable=True)
    score: Mapped[float] = mapped_column(Float)
    text: Mapped[str] = mapped_column(Text)
    prompt_text: Mapped[str | None] = mapped_column(Text, nullable=True)
    text_sha256: Mapped[str] = mapped_column(String(64))
    answerable: Mapped[float | None] = mapped_column(Float, nullable=True)  # the reader's P(answerable)
    evidence_start: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the evidence span in ``text``
    evidence_end: Mapped[int | None] = mapped_column(Integer, nullable=True)

    answer: Mapped[AnswerRow] = relationship(back_populates="chunks")


class FlagRow(Base):
    __tablename__ = "flags"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    # indexed by the unique (answer_id, flagger) constraint
    answer_id: Mapped[str] = mapped_column(ForeignKey("answers.id", ondelete="CASCADE"))
    api_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id"), nullable=True, index=True)
    # api_key_id, or NO_KEY: one flag per (answer, flagger), NULLs would not be unique.
    flagger: Mapped[str] = mapped_column(String(26))
    verdict: Mapped[str] = mapped_column(String(32))
    correction: Mapped[str | None] = mapped_column(Text, nullable=True)
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    review_status: Mapped[str] = mapped_column(String(16))
    reviewed_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    review_note: Mapped[str | None] = mapped_column(Text, nullable=True)

    answer: Mapped[AnswerRow] = relationship(back_populates="flags")

    __table_args__ = (
        UniqueConstraint("answer_id", "flagger"),
        CheckConstraint(
            "verdict IN ('hallucination', 'correct', 'should_have_refused', 'wrong_refusal')",
            name="verdict",
        ),
        CheckConstraint("review_status IN ('pending', 'approved', 'rejected')", name="review_status"),
        Index("ix_flags_review_status_id", "review_status", "id"),
    )


class CollectionThresholdRow(Base):
    """A collection's own refusal threshold, calibrated from its reviewed flags (``candor calibrate``).

    It holds for the answerability model it was calibrated on (``model``, as the answer log names it):
    another reader version falls back to its validation threshold until the collection is calibrated again.
    """

    __tablename__ = "collection_thresholds"

    collection: Mapped[str] = mapped_column(String(200), primary_key=True)
    layer: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(200))
    threshold: Mapped[float] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(32))  # calibration | loop
    flags: Mapped[int] = mapped_column(Integer)
    over_refusal: Mapped[float] = mapped_column(Float)
    hallucination_rate: Mapped[float] = mapped_column(Float)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONType)  # the trade-off: figures at each threshold tried
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str | None] = mapped_column(String(200), nullable=True)

    __table_args__ = (
        CheckConstraint("threshold >= 0 AND threshold <= 1", name="threshold"),
        CheckConstraint("source IN ('calibration', 'loop')", name="source"),
    )
