"""The answer core, run in this process over fixed passages: how the loop's evaluation measures an adapter.

The gate must judge what users get, so the evaluate stage asks every question through the service's
answer core (``candor.service.answering.AnswerEngine``: prompt fitting, the chat template, the retrieval
gate, the refusal rule, the grounding check), not through a scorer of its own. Only the collaborators
differ from the API's, each satisfying the answer core's Protocols (``candor.service.protocols``):

- :class:`FixedPassages` (a ``Retriever``): each question's own passages, the oracle context of a frozen
  question or the logged context of a flagged one, as its own one-question collection;
- :class:`LocalLLM` (an ``LLM``): one adapter of a ``candor.finetune.evaluate.LocalGenerator``, the base
  model and both adapters in memory once; the requests in flight are generated together in batches, as
  ``candor eval`` does (a model server per adapter would cost a base model load each and HTTP per question);
- :class:`MemoryLog` (an ``AnswerLog``): the answer records, kept for the predictions files.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import anyio

from candor.generation import GenerationParams
from candor.ingest.retriever import RetrievedChunk
from candor.prompts import ContextChunk
from candor.service.answering import AnswerEngine, AnswerRequest, AnswerResult
from candor.service.llm_client import Generation, ServerInfo
from candor.service.protocols import Renderer

# A passage handed to the answer core as retrieved: above any retrieval gate, and adding nothing to the
# refusal confidence (``candor.refusal_score.retrieval_refusal`` is 0 at or above its HI).
GIVEN_SCORE = 1.0


class FixedPassages:
    """A ``Retriever`` over fixed passages: collection name -> that question's passages, in order."""

    def __init__(self) -> None:
        self.collections: dict[str, list[RetrievedChunk]] = {}

    def add(self, collection: str, chunks: Sequence[ContextChunk]) -> str:
        self.collections[collection] = [
            RetrievedChunk(f"{collection}#{i}", f"{collection}#{i}", c.text, GIVEN_SCORE, "eval", c.title)
            for i, c in enumerate(chunks)
        ]
        return collection

    def retrieve(self, query: str, collection: str, k: int) -> list[RetrievedChunk]:
        return self.collections[collection][:k]


class MemoryLog:
    """An ``AnswerLog`` in memory: answer id -> the record the answer core logged."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)

    def new_answer_id(self) -> str:
        return f"eval-{next(self._ids)}"

    def log_answer(self, record: dict[str, Any]) -> None:
        self.records[record["answer_id"]] = record

    def log_failure(self, record: dict[str, Any]) -> None:
        raise RuntimeError(f"the evaluation's generation failed: {record.get('error')}")

    def get_collection_threshold(self, collection: str) -> None:
        return None


@dataclass
class _Pending:
    prompt: str
    max_new_tokens: int
    done: anyio.Event
    out: Generation | None = None


class LocalLLM:
    """An ``LLM`` generating in process with ``model`` (an adapter name of ``gen``, or ``base``).

    Requests are held until every question in flight (``expect``) is either waiting for generation or
    finished, then generated together, sorted by prompt so a run is reproducible; the server limits
    (``info``) and the decoding parameters (``params``) are the served ones, from the settings.
    """

    def __init__(
        self,
        gen: Any,
        model: str,
        renderer: Renderer,
        info: ServerInfo,
        *,
        batch_size: int,
        params: GenerationParams | None = None,
    ) -> None:
        self.gen, self.model, self.renderer, self._info = gen, model, renderer, info
        self.params = params  # the served decoding parameters (the LLM client's: penalties, stop sequences)
        self.adapter_id: str | None = model
        self.batch_size = batch_size
        self.outputs: dict[str, tuple[str, list[tuple[str, float]], int]] = {}  # prompt -> what it generated
        self._pending: list[_Pending] = []
        self._in_flight = 0

    async def info(self) -> ServerInfo:
        return self._info

    def expect(self, n: int) -> None:
        self._in_flight += n

    def finished(self) -> None:
        self._in_flight -= 1
        self._flush_when_all_wait()

    def _flush_when_all_wait(self) -> None:
        if not self._pending or len(self._pending) < self._in_flight:
            return
        batch, self._pending = sorted(self._pending, key=lambda p: p.prompt), []
        for max_new in sorted({p.max_new_tokens for p in batch}):
            group = [p for p in batch if p.max_new_tokens == max_new]
            params = None if self.params is None else replace(self.params, max_new_tokens=max_new)
            outs = self.gen.generate([p.prompt for p in group], self.model, max_new, self.batch_size, None, params)
            for p, (text, alts, n) in zip(group, outs, strict=True):
                self.outputs[p.prompt] = (text, alts, n)
                p.out = Generation(text, "eos_token", n, alts, self.adapter_id)
                p.done.set()

    async def generate(
        self,
        prompt: str | None = None,
        messages: Sequence[dict[str, str]] | None = None,
        max_new_tokens: int | None = None,
    ) -> Generation:
        if prompt is None:
            prompt = self.renderer.render(messages or [])
        pending = _Pending(prompt, int(max_new_tokens or 32), anyio.Event())
        self._pending.append(pending)
        self._flush_when_all_wait()
        await pending.done.wait()
        assert pending.out is not None
        return pending.out

    async def stream(
        self,
        prompt: str | None = None,
        messages: Sequence[dict[str, str]] | None = None,
        max_new_tokens: int | None = None,
    ) -> AsyncIterator[Any]:
        out = await self.generate(prompt, messages, max_new_tokens)
        yield out.text
        yield out


def answer_all(engine: AnswerEngine, llm: LocalLLM, requests: Sequence[AnswerRequest]) -> list[AnswerResult]:
    """Every request through ``engine.answer``, all in flight at once so ``llm`` batches their generation."""
    results: list[AnswerResult | None] = [None] * len(requests)

    async def one(i: int) -> None:
        try:
            results[i] = await engine.answer(requests[i])
        finally:
            llm.finished()

    async def run() -> None:
        llm.expect(len(requests))
        async with anyio.create_task_group() as tg:
            for i in range(len(requests)):
                tg.start_soon(one, i)

    anyio.run(run)
    missing = [i for i, r in enumerate(results) if r is None]
    if missing:
        raise RuntimeError(f"{len(missing)} evaluation questions got no answer")
    return [r for r in results if r is not None]
