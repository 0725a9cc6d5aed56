"""What goes into and comes out of the answer store: plain pydantic models.

The API, the answer core and the retraining pipeline use these and never see
ORM objects, so the store can change its tables without touching its callers.
Ground imports only (``candor.prompts`` for rebuilding a logged prompt).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from candor.prompts import ContextChunk, Message, build_messages
from candor.text import NulFreeText, StoredText, check_storable


class Verdict(StrEnum):
    HALLUCINATION = "hallucination"
    CORRECT = "correct"
    SHOULD_HAVE_REFUSED = "should_have_refused"
    WRONG_REFUSAL = "wrong_refusal"


class ReviewStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


class RefusalLayer(StrEnum):
    RETRIEVAL_GATE = "retrieval_gate"
    VERIFIER = "verifier"
    READER = "reader"
    MODEL = "model"
    GROUNDING = "grounding"
    THRESHOLD = "threshold"


class Role(StrEnum):
    USER = "user"
    ADMIN = "admin"


class AnswerStatus(StrEnum):
    OK = "ok"  # an answer or a refusal was given
    FAILED = "failed"  # no answer: model server down, overloaded, ...


def content_hash(text: str) -> str:
    """sha256 of a chunk's text: tells whether the document changed since the answer."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, use_enum_values=False)


class Timings(_Model):
    """Milliseconds spent in each stage (None: the stage did not run)."""

    retrieval: float | None = None
    generation: float | None = None
    total: float | None = None


class ChunkLog(_Model):
    """One retrieved chunk as the answer saw it; a copy that survives re-ingest.

    ``prompt_text`` is the text that went into the prompt (the retrieved text,
    or its trimmed prefix when the prompt was fitted to the model's budget);
    ``None`` means the chunk was retrieved but dropped from the prompt.
    ``text_sha256`` tells later whether the document changed since.
    """

    chunk_id: NulFreeText
    doc_id: NulFreeText
    source: NulFreeText
    score: float
    text: NulFreeText
    title: NulFreeText | None = None
    prompt_text: NulFreeText | None = None
    text_sha256: str = ""
    rank: int = 0
    answerable: float | None = None  # the answerability reader's P(answerable) for this chunk
    evidence_start: int | None = None  # the reader's evidence span, character offsets into ``text``
    evidence_end: int | None = None

    @model_validator(mode="after")
    def _hash(self) -> ChunkLog:
        if not self.text_sha256:
            object.__setattr__(self, "text_sha256", content_hash(self.text))
        return self

    @property
    def in_prompt(self) -> bool:
        return self.prompt_text is not None


class _Retrieved(Protocol):
    chunk_id: str
    doc_id: str
    text: str
    score: float
    source: str
    title: str | None


def chunks_for_log(retrieved: Sequence[_Retrieved], prompt_chunks: Sequence[ContextChunk]) -> list[ChunkLog]:
    """Pair the retriever's chunks with what the prompt fitting kept.

    ``prompt_chunks`` is ``FittedPrompt.chunks``: a prefix of the retrieved
    chunks in rank order, the last one possibly trimmed.
    """
    out = []
    for rank, chunk in enumerate(retrieved):
        kept = prompt_chunks[rank].text if rank < len(prompt_chunks) else None
        out.append(
            ChunkLog(
                chunk_id=chunk.chunk_id,
                doc_id=chunk.doc_id,
                source=chunk.source,
                score=float(chunk.score),
                text=chunk.text,
                title=chunk.title,
                prompt_text=kept,
                rank=rank,
            )
        )
    return out


class _Asked(_Model):
    """What every logged question carries, answered or failed."""

    answer_id: str | None = Field(None, description="Pre-allocated with new_answer_id(); default: a new id.")
    question: StoredText
    collection: StoredText
    history: list[Message] = Field(default_factory=list)
    history_in_prompt: int | None = Field(
        None, ge=0, description="How many of the most recent history turns the prompt kept; None: all."
    )
    retrieval_query: NulFreeText | None = None
    chunks: list[ChunkLog] = Field(default_factory=list)
    prompt_version: str | None = None
    rendered_prompt: NulFreeText | None = Field(None, validation_alias=AliasChoices("rendered_prompt", "prompt"))
    model_base: str | None = None
    adapter: str | None = None
    adapter_version: str | None = None
    timings_ms: Timings = Timings()
    api_key_id: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("history")
    @classmethod
    def _storable_history(cls, history: list[Message]) -> list[Message]:
        """Earlier turns come from the client, like the question: refused (not cleaned) if unstorable."""
        for turn in history:
            for value in turn.values():
                check_storable(value)
        return history

    @field_validator("chunks", mode="before")
    @classmethod
    def _rank(cls, chunks: Any) -> Any:
        """Chunks arrive in rank order; number them unless the caller did."""
        if not isinstance(chunks, list):
            return chunks
        out = []
        for i, c in enumerate(chunks):
            if isinstance(c, dict) and "rank" not in c:
                c = {**c, "rank": i}
            out.append(c)
        return out


class NewAnswer(_Asked):
    """An answer (or a refusal) to log, with everything needed to rebuild its prompt."""

    prompt_version: str
    answer: NulFreeText
    raw_answer: NulFreeText | None = Field(
        None, description="The model's text before the refusal policy, if it differs."
    )
    refused: bool
    refusal_layer: RefusalLayer | None = None
    refusal_confidence: float | None = None
    grounded: bool | None = None
    grounding_support: float | None = None
    answerability_model: str | None = Field(None, description="The reader (or verifier) that decided, and version.")
    answerability_threshold: float | None = None

    @model_validator(mode="after")
    def _layer_matches(self) -> NewAnswer:
        if self.refused and self.refusal_layer is None:
            raise ValueError("a refused answer needs its refusal_layer")
        if not self.refused and self.refusal_layer is not None:
            raise ValueError("refusal_layer is only for refused answers")
        return self


class NewFailure(_Asked):
    """A question that got no answer (model server down, ...): logged, never as an answer."""

    error: NulFreeText


class Flag(_Model):
    id: str
    answer_id: str
    verdict: Verdict
    correction: str | None
    comment: str | None
    api_key_id: str | None
    created_at: datetime
    updated_at: datetime
    review_status: ReviewStatus
    reviewed_by: str | None = None
    reviewed_at: datetime | None = None
    review_note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class Answer(_Model):
    id: str
    created_at: datetime
    status: AnswerStatus
    question: str
    collection: str
    history: list[Message]
    history_in_prompt: int | None
    retrieval_query: str | None
    chunks: list[ChunkLog]
    prompt_version: str | None
    rendered_prompt: str | None
    model_base: str | None
    adapter: str | None
    adapter_version: str | None
    answer: str | None
    raw_answer: str | None
    refused: bool | None
    refusal_layer: RefusalLayer | None
    refusal_confidence: float | None
    grounded: bool | None
    grounding_support: float | None
    answerability_model: str | None = None
    answerability_threshold: float | None = None
    timings_ms: Timings
    api_key_id: str | None
    error: str | None
    meta: dict[str, Any]
    flags: list[Flag] = Field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (ids, ISO timestamps, enum values)."""
        return self.model_dump(mode="json")

    @property
    def prompt_chunks(self) -> list[ContextChunk]:
        """The context passages exactly as they went into the prompt, in order."""
        return [ContextChunk(c.prompt_text, c.title) for c in self.chunks if c.prompt_text is not None]

    @property
    def prompt_history(self) -> list[Message]:
        if self.history_in_prompt is None:
            return list(self.history)
        return list(self.history[len(self.history) - self.history_in_prompt :])

    def rebuild_messages(self) -> list[Message]:
        """The chat messages the model saw (for prompt version ``prompt_version``)."""
        return build_messages(self.question, self.prompt_chunks, self.prompt_history)


class AnswerPage(_Model):
    items: list[Answer]
    next_cursor: str | None


class FlagPage(_Model):
    items: list[Flag]
    next_cursor: str | None


class ApiKey(_Model):
    id: str
    name: str
    role: Role
    collections: list[str] | None  # None: every collection
    trusted: bool
    created_at: datetime
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN

    def allows(self, collection: str) -> bool:
        return self.collections is None or collection in self.collections

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class PurgeResult(_Model):
    answers: int
    flags: int


class ErasureResult(_Model):
    key_id: str
    answers: int
    flags: int
    key_revoked: bool


class AdapterStats(_Model):
    """Counts for one adapter version: the retraining loop watches these for a rollback."""

    adapter: str | None
    adapter_version: str | None
    answers: int
    refusals: int
    failures: int
    flags: int
    flags_by_verdict: dict[str, int]

    @property
    def flag_rate(self) -> float:
        return self.flags / self.answers if self.answers else 0.0

    @property
    def refusal_rate(self) -> float:
        return self.refusals / self.answers if self.answers else 0.0
