"""The answer core: retrieve → fit the prompt → generate → refusal policy → log.

One class with no web framework in it. The API routes, the end-to-end
evaluation and the benchmarks all call it, so what is measured is what is
served. Blocking work (query embedding, the database) runs in worker threads;
query embedding goes through a one-slot limiter because the API process gives
torch a single thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from candor.decision import ALL_LAYERS, GROUNDING, THRESHOLD, decide, resolve_threshold
from candor.errors import CandorError, InvalidInputError
from candor.feedback.thresholds import effective_threshold
from candor.generation import LeadIn, RepeatGuard, strip_lead_in, tidy
from candor.prompts import (
    PROMPT_VERSION,
    REFUSAL_SENTENCE,
    ContextChunk,
    PromptTooLong,
    evidence_text,
    fit_messages,
    normalize_text,
)
from candor.reader import Evidence, PassageReader
from candor.refusal_score import refusal_confidence
from candor.service import refusal_policy as policy
from candor.service.injection import strip_injections
from candor.service.protocols import LLM, AnswerLog, Renderer, RetrievedChunk, Retriever
from candor.settings import Settings

log = logging.getLogger("candor.answering")


@dataclass
class AnswerRequest:
    question: str
    collection: str
    top_k: int | None = None
    history: list[dict[str, str]] = field(default_factory=list)
    api_key_id: str | None = None


@dataclass
class AnswerResult:
    answer_id: str
    answer: str
    refused: bool
    refusal_layer: str | None
    refusal_confidence: float | None
    citations: list[dict[str, Any]]
    grounded: bool | None
    grounding_support: float | None
    model: dict[str, str | None]
    timings_ms: dict[str, float]
    # the answerability reader's best passage and span (None without a reader, or with no passage)
    evidence: dict[str, Any] | None = None
    # every refusal signal measured, whichever one the policy applied (for evaluation; not in the API body)
    signals: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "answer_id": self.answer_id,
            "answer": self.answer,
            "refused": self.refused,
            "refusal_layer": self.refusal_layer,
            "refusal_confidence": self.refusal_confidence,
            "citations": self.citations,
            "grounded": self.grounded,
            "grounding_support": self.grounding_support,
            "model": self.model,
            "timings_ms": self.timings_ms,
            "evidence": self.evidence,
        }


@dataclass
class _Prepared:
    """Everything known before generation starts."""

    request: AnswerRequest
    started: float
    retrieval_ms: float
    retrieved: list[RetrievedChunk]  # in rank order
    gate: policy.GateDecision
    used: list[RetrievedChunk] = field(default_factory=list)  # chunks that made it into the prompt
    contexts: list[str] = field(default_factory=list)  # their texts as sent (maybe trimmed)
    history: list[dict[str, str]] = field(default_factory=list)
    query: str = ""
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    answerable: float | None = None  # the answerability layer's P(answerable), when one is configured
    evidence: list[Evidence] = field(default_factory=list)  # its verdict on each passage in the prompt
    verifier_ms: float = 0.0  # time in the answerability layer (reader or verifier)
    calibrated: float | None = None  # the collection's own threshold for the serving reader, if calibrated

    def best_evidence(self) -> Evidence | None:
        return max(self.evidence, key=lambda ev: ev.answerable) if self.evidence else None


def retrieval_query(question: str, history: Sequence[dict[str, str]]) -> str:
    """A follow-up alone often lacks its subject: prepend the last user turns."""
    earlier = [t["content"] for t in history if t.get("role") == "user"][-2:]
    return " ".join([*earlier, question]).strip()


def _has_word(text: str) -> bool:
    """Whether relayed text holds a word: text without one is no answer (``candor.prompts.gives_no_answer``)."""
    return bool(normalize_text(text))


def _citation(chunk: RetrievedChunk, snippet_chars: int = 300) -> dict[str, Any]:
    # The snippet shows the passage as the model saw it: sentences the injection filter dropped from the
    # prompt are not relayed to clients either. The filter is phrase-based, so a snippet is still untrusted
    # document text (docs/deploy.md, "Citations are untrusted text").
    text = " ".join(strip_injections(chunk.text)[0].split())
    return {
        "doc_id": chunk.doc_id,
        "chunk_id": chunk.chunk_id,
        "source": chunk.source,
        "snippet": text[:snippet_chars] + ("…" if len(text) > snippet_chars else ""),
        "score": round(float(chunk.score), 4),
    }


def _evidence_out(prep: _Prepared) -> dict[str, Any] | None:
    """The best passage's evidence as clients see it: offsets into ``passage``, the text the model saw."""
    ev = prep.best_evidence()
    if ev is None:
        return None
    chunk = prep.used[ev.passage]
    return {
        "chunk_id": chunk.chunk_id,
        "doc_id": chunk.doc_id,
        "passage": prep.contexts[ev.passage],
        "start": ev.start if ev.start >= 0 else None,
        "end": ev.end if ev.start >= 0 else None,
        "text": ev.text,
        "score": round(ev.answerable, 4),
    }


def _evidence_sentence(prep: _Prepared, best: Evidence | None) -> str | None:
    """The sentence holding the reader's span, in the passage as the model saw it (None: no span marked)."""
    if best is None or best.start < 0:
        return None
    return policy.evidence_sentence(prep.contexts[best.passage], best.start, best.end)


def _chunk_log(chunk: RetrievedChunk, sent_text: str | None, ev: Evidence | None = None) -> dict[str, Any]:
    return {
        "chunk_id": chunk.chunk_id,
        "doc_id": chunk.doc_id,
        "source": chunk.source,
        "title": chunk.title,
        "score": float(chunk.score),
        "text": chunk.text,
        "text_sha256": hashlib.sha256(chunk.text.encode()).hexdigest(),
        "prompt_text": sent_text,
        "answerable": None if ev is None else round(ev.answerable, 6),
        "evidence_start": None if ev is None or ev.start < 0 else ev.start,
        "evidence_end": None if ev is None or ev.start < 0 else ev.end,
    }


class AnswerEngine:
    """``layers``: the refusal layers that may refuse (``candor.decision``); the default is all of them.
    An evaluation that applies its own thresholds passes ``candor.decision.MEASURE_ONLY``: every refusal
    confidence is still measured and reported, and no threshold refuses. The retrieval gate and the
    model's own refusal always apply."""

    def __init__(
        self,
        settings: Settings,
        retriever: Retriever,
        llm: LLM,
        renderer: Renderer,
        store: AnswerLog,
        answerability: PassageReader | None = None,
        *,
        layers: frozenset[str] = ALL_LAYERS,
    ) -> None:
        self.settings = settings
        self.answerability = answerability
        self.layers = frozenset(layers)
        self.retriever = retriever
        self.llm = llm
        self.renderer = renderer
        self.store = store
        self._embed_limiter = anyio.CapacityLimiter(1)
        self._verifier_limiter = anyio.CapacityLimiter(1)  # its own: retrieval must not queue behind it
        self._info: Any = None

    # --- pieces ------------------------------------------------------------
    async def server_info(self) -> Any:
        if self._info is None:
            self._info = await self.llm.info()
        return self._info

    def model_ref(self) -> dict[str, str | None]:
        info = self._info
        return {
            "base": getattr(info, "model_id", None) or "unknown",
            "adapter": self.llm.adapter_id,
            "adapter_version": getattr(self.llm, "adapter_version", None),
        }

    async def _prepare(self, req: AnswerRequest) -> _Prepared:
        if len(req.question) > self.settings.max_question_chars:
            raise InvalidInputError(
                f"question is {len(req.question)} characters; the limit is {self.settings.max_question_chars}"
            )
        started = time.perf_counter()
        k = req.top_k or self.settings.top_k
        query = retrieval_query(req.question, req.history)
        retrieved = await anyio.to_thread.run_sync(
            self.retriever.retrieve, query, req.collection, k, limiter=self._embed_limiter
        )
        retrieval_ms = (time.perf_counter() - started) * 1000
        gate = policy.retrieval_gate([c.score for c in retrieved], self.settings.min_retrieval_score)
        prep = _Prepared(req, started, retrieval_ms, list(retrieved), gate, query=query)
        if self.answerability is not None:
            prep.calibrated = await anyio.to_thread.run_sync(self.calibrated_threshold, req.collection)
        if not gate.passed:
            return prep
        try:
            info = await self.server_info()
        except CandorError as exc:
            await self._log_failure(prep, req, exc)
            raise
        budget = min(info.max_input_tokens, info.max_total_tokens - self.settings.max_new_tokens) - 8
        # Passages are data: sentences in them that instruct the model are dropped (OWASP LLM01).
        chunks = [ContextChunk(strip_injections(c.text)[0], c.title) for c in retrieved]
        try:
            fitted = fit_messages(req.question, chunks, req.history, self.renderer.count_tokens, budget)
        except PromptTooLong as exc:
            raise InvalidInputError(str(exc)) from None
        prep.used = retrieved[: len(fitted.chunks)]
        prep.contexts = [c.text for c in fitted.chunks]
        prep.history = fitted.messages[1:-1]
        prep.messages = fitted.messages
        prep.prompt = self.renderer.render(fitted.messages)
        if self.answerability is not None:
            t0 = time.perf_counter()
            # the retrieval query: a follow-up carries its subject from the earlier turns
            prep.evidence = await anyio.to_thread.run_sync(
                self.answerability.read, query, prep.contexts, limiter=self._verifier_limiter
            )
            prep.answerable = max((ev.answerable for ev in prep.evidence), default=0.0)
            prep.verifier_ms = (time.perf_counter() - t0) * 1000
            self._add_evidence_line(prep, req, budget)
        return prep

    def _add_evidence_line(self, prep: _Prepared, req: AnswerRequest, budget: int) -> None:
        """The reader's evidence before the question (``prompt_evidence``), refitted into the same budget.

        Should the line push the prompt over the budget, passages are dropped or trimmed as usual; the
        reader's verdicts on passages no longer in the prompt are dropped with them.
        """
        best = prep.best_evidence()
        if best is None or self.settings.prompt_evidence == "none":
            return
        line = evidence_text(self.settings.prompt_evidence, prep.contexts[best.passage], best.start, best.end)
        if line is None:
            return
        kept = [ContextChunk(text, c.title) for c, text in zip(prep.used, prep.contexts, strict=True)]
        try:
            fitted = fit_messages(req.question, kept, req.history, self.renderer.count_tokens, budget, evidence=line)
        except PromptTooLong:
            return  # the question fits without the line: serve it without
        prep.used = prep.used[: len(fitted.chunks)]
        prep.contexts = [c.text for c in fitted.chunks]
        prep.evidence = [
            ev for ev in prep.evidence if ev.passage < len(prep.contexts) and ev.end <= len(prep.contexts[ev.passage])
        ]
        prep.history = fitted.messages[1:-1]
        prep.messages = fitted.messages
        prep.prompt = self.renderer.render(fitted.messages)

    def verifier_threshold(self, calibrated: float | None = None) -> float | None:
        """The answerability layer's threshold on 1 - P(answerable): the setting, else the collection's own
        (``calibrated``), else the model's own (``candor.decision.threshold_source``)."""
        if self.answerability is None:
            return None
        return resolve_threshold(self.settings, self.answerability.layer, self.answerability.threshold, calibrated)

    def calibrated_threshold(self, collection: str) -> float | None:
        """The collection's calibrated threshold (``candor calibrate``), when it was made for the model serving
        now; a calibration of another reader version does not carry over."""
        if self.answerability is None:
            return None
        record = self.store.get_collection_threshold(collection)
        if record is None or record.model != self.answerability.version or record.layer != self.answerability.layer:
            return None
        return record.threshold

    def collection_threshold(self, collection: str) -> float | None:
        """The threshold a question on ``collection`` is decided at now."""
        return self.verifier_threshold(self.calibrated_threshold(collection))

    def threshold_report(self, collection: str) -> dict[str, Any] | None:
        """What ``collection`` refuses at, where that came from and the calibration on record (the API's
        ``GET /v1/collections/{name}/threshold``); None without an answerability layer."""
        model = self.answerability
        if model is None:
            return None
        record = self.store.get_collection_threshold(collection)
        return effective_threshold(self.settings, model.layer, model.version, model.threshold, record)

    def token_threshold(self) -> float | None:
        """The first-token threshold, applied after generation: only without an answerability layer (whose
        threshold applies before generation) and while the ``threshold`` layer is on."""
        if self.answerability is not None or THRESHOLD not in self.layers:
            return None
        return resolve_threshold(self.settings, THRESHOLD)

    def _verifier_confidence(self, prep: _Prepared) -> float | None:
        """The refusal confidence before generation: 1 - P(answerable), raised by a weak best retrieval
        match, exactly as reported in ``refusal_confidence`` and scored by ``candor eval``."""
        if prep.answerable is None:
            return None
        return refusal_confidence(None, [c.score for c in prep.used], prep.answerable)

    def _verifier_refuses(self, prep: _Prepared) -> bool:
        if self.answerability is None or self.answerability.layer not in self.layers:
            return False
        layer = self.answerability.layer
        return (
            decide(self._verifier_confidence(prep), self.verifier_threshold(prep.calibrated), layer=layer) is not None
        )

    def _timings(self, prep: _Prepared, generation_ms: float) -> dict[str, float]:
        total = (time.perf_counter() - prep.started) * 1000
        return {
            "retrieval": round(prep.retrieval_ms, 2),
            "verifier": round(prep.verifier_ms, 2),
            "generation": round(generation_ms, 2),
            "total": round(total, 2),
        }

    async def _log(self, prep: _Prepared, result: AnswerResult, raw_answer: str | None) -> None:
        sent = dict(zip([c.chunk_id for c in prep.used], prep.contexts, strict=True))
        by_chunk = {prep.used[ev.passage].chunk_id: ev for ev in prep.evidence}
        record = {
            "answer_id": result.answer_id,
            "question": prep.request.question,
            "history": prep.request.history,
            "history_in_prompt": len(prep.history) if prep.messages is not None else None,
            "retrieval_query": prep.query,
            "collection": prep.request.collection,
            "chunks": [_chunk_log(c, sent.get(c.chunk_id), by_chunk.get(c.chunk_id)) for c in prep.retrieved],
            "prompt_version": PROMPT_VERSION,
            "prompt": prep.prompt,
            "model_base": result.model["base"],
            "adapter": result.model["adapter"],
            "adapter_version": result.model["adapter_version"],
            "answer": result.answer,
            "raw_answer": raw_answer,
            "refused": result.refused,
            "refusal_layer": result.refusal_layer,
            "refusal_confidence": result.refusal_confidence,
            "grounded": result.grounded,
            "grounding_support": result.grounding_support,
            "answerability_model": None if self.answerability is None else self.answerability.version,
            "answerability_threshold": self.verifier_threshold(prep.calibrated),
            "timings_ms": result.timings_ms,
            "api_key_id": prep.request.api_key_id,
        }
        await anyio.to_thread.run_sync(self.store.log_answer, record)

    async def _log_failure(self, prep: _Prepared | None, req: AnswerRequest, error: Exception) -> None:
        record = {
            "question": req.question,
            "history": req.history,
            "retrieval_query": prep.query if prep else None,
            "collection": req.collection,
            "chunks": [_chunk_log(c, None) for c in prep.retrieved] if prep else [],
            "prompt_version": PROMPT_VERSION,
            "model_base": self.model_ref()["base"],
            "adapter": self.llm.adapter_id,
            "error": f"{type(error).__name__}: {error}",
            "api_key_id": req.api_key_id,
        }
        try:
            await anyio.to_thread.run_sync(self.store.log_failure, record)
        except Exception:  # the original error matters more to the caller
            log.exception("could not log a failed answer")

    def _payload(self, prep: _Prepared) -> dict[str, Any]:
        """TGI gets the prompt rendered with the model's chat template; OpenAI engines get the messages."""
        if self.settings.llm_backend == "openai":
            return {"messages": prep.messages}
        return {"prompt": prep.prompt}

    def _new_id(self) -> str:
        return self.store.new_answer_id()

    def _gate_result(self, prep: _Prepared) -> AnswerResult:
        """A refusal decided before generation: the retrieval gate, else the answerability layer."""
        layer, confidence = policy.RETRIEVAL_GATE, None
        if prep.gate.passed and self.answerability is not None:
            layer, confidence = self.answerability.layer, round(self._verifier_confidence(prep), 4)
        return AnswerResult(
            answer_id=self._new_id(),
            answer=REFUSAL_SENTENCE,
            refused=True,
            refusal_layer=layer,
            refusal_confidence=confidence,
            citations=[],
            grounded=None,
            grounding_support=None,
            model=self.model_ref(),
            timings_ms=self._timings(prep, 0.0),
            evidence=_evidence_out(prep),
        )

    def _judge(self, prep: _Prepared, text: str, first_token_top: Any, generation_ms: float) -> AnswerResult:
        confidence = refusal_confidence(first_token_top, [c.score for c in prep.used], prep.answerable)
        best = prep.best_evidence()
        outcome = policy.judge_answer(
            text,
            prep.contexts,
            refusal_confidence=confidence,
            # with a verifier its threshold applied before generation; refusal_threshold is the first token's
            refusal_threshold=self.token_threshold(),
            min_support=self.settings.grounding_min_support,
            enforce_grounding=self.settings.grounding_enforce and GROUNDING in self.layers,
            evidence=_evidence_sentence(prep, best),
        )
        answer = REFUSAL_SENTENCE if outcome.refused else text.strip()
        signals = {"first_token": refusal_confidence(first_token_top, [c.score for c in prep.used])}
        if prep.answerable is not None:
            signals["verifier"] = confidence  # the answerability layer's (reader or verifier)
        return AnswerResult(
            signals=signals,
            answer_id=self._new_id(),
            answer=answer,
            refused=outcome.refused,
            refusal_layer=outcome.layer,
            refusal_confidence=None if confidence is None else round(confidence, 4),
            citations=[] if outcome.refused else [_citation(c) for c in prep.used],
            grounded=outcome.grounded,
            grounding_support=None if outcome.support is None else round(outcome.support, 4),
            model=self.model_ref(),
            timings_ms=self._timings(prep, generation_ms),
            evidence=_evidence_out(prep),
        )

    # --- the two entry points --------------------------------------------------
    async def answer(self, req: AnswerRequest) -> AnswerResult:
        prep = await self._prepare(req)
        if not prep.gate.passed or self._verifier_refuses(prep):
            result = self._gate_result(prep)
            await self._log(prep, result, None)
            return result
        t0 = time.perf_counter()
        try:
            gen = await self.llm.generate(**self._payload(prep), max_new_tokens=self.settings.max_new_tokens)
        except CandorError as exc:
            await self._log_failure(prep, req, exc)
            raise
        # a loop is cut at its first repeated sentence, and a stock opening dropped (candor.generation)
        text = tidy(gen.text)
        result = self._judge(prep, text, gen.first_token_top, (time.perf_counter() - t0) * 1000)
        await self._log(prep, result, gen.text)
        return result

    async def stream(self, req: AnswerRequest) -> AsyncIterator[dict[str, Any]]:
        """Events: {"event": "token", "text"} ..., then {"event": "done", "result"}.

        When the grounding check may withdraw an answer, tokens are held until
        it has run, so a client never sees text that is then replaced.

        A sentence that may repeat an earlier one is held back (``RepeatGuard``); when one does, the
        stream to the model server is closed, which makes the server drop the request at its next step
        (model_server/app.py cancels on disconnect; TGI does the same), and the answer ends there. Only
        when the first-token threshold applies (no answerability layer) is the rest drained unrelayed,
        for the final event's first-token alternatives.
        """
        prep = await self._prepare(req)
        if not prep.gate.passed or self._verifier_refuses(prep):
            result = self._gate_result(prep)
            await self._log(prep, result, None)
            yield {"event": "token", "text": result.answer}
            yield {"event": "done", "result": result}
            return
        enforce_grounding = self.settings.grounding_enforce and GROUNDING in self.layers
        hold = enforce_grounding or self.token_threshold() is not None
        t0 = time.perf_counter()
        pieces: list[str] = []
        final = None
        relayed = False
        guard, lead = RepeatGuard(), LeadIn()  # applied in tidy's order: the repeat cut, then the opening
        drain = self.token_threshold() is not None
        try:
            events = self.llm.stream(**self._payload(prep), max_new_tokens=self.settings.max_new_tokens)
            async with contextlib.aclosing(events):
                async for ev in events:
                    if isinstance(ev, str):
                        pieces.append(ev)
                        out = lead.feed(guard.feed(ev))
                        if out and not hold:
                            relayed = relayed or _has_word(out)
                            yield {"event": "token", "text": out}
                        if guard.stopped and not drain:
                            break  # aclosing closes the HTTP stream: the server stops generating
                    else:
                        final = ev
        except CandorError as exc:
            await self._log_failure(prep, req, exc)
            raise
        raw = final.text if final is not None else "".join(pieces)
        tail = "" if guard.stopped else lead.feed(guard.finish())
        tail += lead.finish()
        if tail and not hold:
            relayed = relayed or _has_word(tail)
            yield {"event": "token", "text": tail}
        text = strip_lead_in(guard.relayed).rstrip() if guard.stopped else tidy(raw)
        first_top = final.first_token_top if final is not None else None
        result = self._judge(prep, text, first_top, (time.perf_counter() - t0) * 1000)
        await self._log(prep, result, raw)
        # held, or no word was relayed (an answer that was only an opening, or punctuation): the final text
        if hold or not relayed:
            yield {"event": "token", "text": result.answer}
        yield {"event": "done", "result": result}
