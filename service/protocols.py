"""What the answer core needs from its collaborators, as Protocols (structural types).

The answer core (``candor.service.answering``) is written against these, not against the concrete
classes, so that the API, ``candor eval --mode rag``, the benchmarks and the tests can hand it the real
ones (``candor.ingest.retriever.Retriever``, ``candor.service.llm_client.LLMClient``,
``candor.service.chat_template.PromptRenderer``, ``candor.feedback.store.AnswerStore``,
``candor.reader.AnswerabilityReader`` or ``candor.answerability.AnswerabilityVerifier``) or a stub.
The answerability layer's Protocol is ``candor.reader.PassageReader``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

from candor.ingest.retriever import RetrievedChunk
from candor.reader import PassageReader

__all__ = ["AnswerLog", "LLM", "PassageReader", "Renderer", "RetrievedChunk", "Retriever"]


class Retriever(Protocol):
    """Passages for a query, best first (``candor.ingest.retriever.Retriever``)."""

    def retrieve(self, query: str, collection: str, k: int) -> Sequence[RetrievedChunk]: ...


class Renderer(Protocol):
    """The model's chat template: messages in, the prompt text (or its length in tokens) out."""

    def render(self, messages: Sequence[dict[str, str]]) -> str: ...

    def count_tokens(self, messages: Sequence[dict[str, str]]) -> int: ...


class LLM(Protocol):
    """A TGI- or OpenAI-protocol generation client (``candor.service.llm_client.LLMClient``)."""

    adapter_id: str | None

    async def info(self) -> Any: ...  # ServerInfo: model_id, max_input_tokens, max_total_tokens

    async def generate(
        self,
        prompt: str | None = None,
        messages: Sequence[dict[str, str]] | None = None,
        max_new_tokens: int | None = None,
    ) -> Any: ...  # Generation: text, first_token_top

    def stream(
        self,
        prompt: str | None = None,
        messages: Sequence[dict[str, str]] | None = None,
        max_new_tokens: int | None = None,
    ) -> AsyncIterator[Any]: ...  # pieces of text (str), then one Generation


class AnswerLog(Protocol):
    """The part of the answer store the answer core writes to."""

    def new_answer_id(self) -> str: ...

    def log_answer(self, record: dict[str, Any]) -> Any: ...

    def log_failure(self, record: dict[str, Any]) -> Any: ...

    def get_collection_threshold(self, collection: str) -> Any: ...  # CollectionThreshold | None
