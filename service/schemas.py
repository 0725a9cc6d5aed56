"""Request and response bodies of the chat API (pydantic models, shown in /docs)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    StrictBool,
    StrictInt,
    StringConstraints,
    field_validator,
)

from candor.text import StoredText

COLLECTION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{1,61}[A-Za-z0-9]$"  # ingest reserves dots


class Turn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["user", "assistant"]
    content: StoredText = Field(max_length=20_000)


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: StoredText = Field(min_length=1, description="The question to answer from the collection.")
    collection: str = Field(pattern=COLLECTION_PATTERN, description="Which document collection to search.")
    top_k: int | None = Field(None, ge=1, le=20, description="How many chunks to retrieve.")
    stream: bool = Field(False, description="Server-sent events: token events, then a final event.")
    history: list[Turn] = Field(default_factory=list, max_length=20, description="Earlier turns, oldest first.")

    @field_validator("question")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("question must not be blank")
        return v


class Citation(BaseModel):
    doc_id: str
    chunk_id: str
    source: str
    snippet: str
    score: float


class ModelRef(BaseModel):
    base: str
    adapter: str | None
    adapter_version: str | None = None


class EvidenceSpan(BaseModel):
    """The answerability reader's best passage, and where in it the answer is."""

    chunk_id: str
    doc_id: str
    passage: str = Field(description="The passage as the model saw it; start/end index into it.")
    start: int | None = Field(description="Character offset of the evidence span (None: no span marked).")
    end: int | None
    text: str = Field(description="The evidence span's text.")
    score: float = Field(description="The reader's P(answerable) for this passage.")


class Timings(BaseModel):
    retrieval: float
    verifier: float = 0.0  # the answerability layer (reader or verifier), when one is configured
    generation: float
    total: float


class ChatResponse(BaseModel):
    answer_id: str
    answer: str
    refused: bool
    refusal_layer: Literal["retrieval_gate", "verifier", "reader", "model", "threshold", "grounding"] | None
    refusal_confidence: float | None
    citations: list[Citation]
    grounded: bool | None
    grounding_support: float | None
    model: ModelRef
    timings_ms: Timings
    evidence: EvidenceSpan | None = None


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    verdict: Literal["hallucination", "correct", "should_have_refused", "wrong_refusal"]
    correction: StoredText | None = Field(None, max_length=4000)
    comment: StoredText | None = Field(None, max_length=4000)


class FeedbackResponse(BaseModel):
    feedback_id: str
    answer_id: str
    verdict: str
    review_status: str


MetaKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")]
MetaValue = Annotated[StoredText, StringConstraints(max_length=1000)] | StrictBool | StrictInt | FiniteFloat


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: StoredText = Field(min_length=1, max_length=512, pattern=r"^[^\x00-\x1f]+$")
    text: StoredText = Field(min_length=1, max_length=2_000_000)
    title: StoredText | None = Field(None, max_length=1000)
    metadata: dict[MetaKey, MetaValue] = Field(default_factory=dict, max_length=32)

    @field_validator("id")
    @classmethod
    def _relative_path_id(cls, v: str) -> str:
        # Ids double as file paths relative to an ingest root (and show up as sources): an id that
        # climbs out of its root or names an absolute path is refused, not stored.
        if re.match(r"^([/\\]|[A-Za-z]:)", v) or ".." in re.split(r"[/\\]", v):
            raise ValueError("document id must be a relative path without '..' segments")
        return v


class DocumentsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    documents: list[DocumentIn] = Field(min_length=1, max_length=1000)


class ErrorBody(BaseModel):
    error: str
    detail: Any | None = None


class AnswerPage(BaseModel):
    items: list[dict[str, Any]]
    next_cursor: str | None


class HealthBody(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)
    time: datetime | None = None
