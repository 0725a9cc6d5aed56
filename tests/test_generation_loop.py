"""Issue 18, with the real model: a prompt on which the shipped adapter looped in the handbook run
(reports/eval-handbook-reader.md, hb-a22) gives an answer without a repeated sentence, answered or streamed;
a dev question it answers "The answer is: 1185" comes back as "1185", answered or streamed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from fixtures.core import REPO_ROOT, SQUAD_DIR

from candor.decision import MEASURE_ONLY
from candor.generation import repeats_a_sentence
from candor.jsonl import read_jsonl
from candor.prompts import ContextChunk
from candor.retrain.served import FixedPassages, MemoryLog
from candor.service.answering import AnswerEngine, AnswerRequest
from candor.service.chat_template import PromptRenderer
from candor.service.llm_client import LLMClient, ServerInfo
from candor.settings import load_settings

LOOP = json.loads((Path(__file__).parent / "fixtures" / "handbook_loop.json").read_text(encoding="utf-8"))


@pytest.mark.slow
def test_the_answer_core_cuts_the_loop_and_the_opening_the_shipped_adapter_made(
    model_server_factory, base_model_dir: Path
) -> None:
    server = model_server_factory(adapters={"candor-refusal": REPO_ROOT / "models" / "candor-refusal"})
    # no penalty and no stop sequence: the loop is the model's, the guard alone must stop it
    settings = load_settings(
        llm_url=server.url, llm_adapter="candor-refusal", max_new_tokens=64, stop_sequences=[], prompt_evidence="none"
    )
    passages = FixedPassages()
    collection = passages.add("handbook", [ContextChunk(c["text"], c["title"]) for c in LOOP["chunks"]])
    log = MemoryLog()
    engine = AnswerEngine(
        settings, passages, LLMClient(settings), PromptRenderer(base_model_dir), log, layers=MEASURE_ONLY
    )
    request = AnswerRequest(LOOP["question"], collection, top_k=len(LOOP["chunks"]))

    # a dev question (Normans) the shipped adapter opens with "The answer is:" (reports/eval-oracle-dev300-trainer)
    question = next(q for q in read_jsonl(SQUAD_DIR / "dev.questions.jsonl") if q["id"] == "56de1563cffd8e1900b4b5c2")
    paragraph = next(p for p in read_jsonl(SQUAD_DIR / "dev.paragraphs.jsonl") if p["doc_id"] == question["doc_id"])
    normans = passages.add("normans", [ContextChunk(paragraph["text"], paragraph["title"])])
    opening = AnswerRequest(question["question"], normans, top_k=1)

    async def scenario():
        answered = await engine.answer(request)
        events = [ev async for ev in engine.stream(request)]
        opened = await engine.answer(opening)
        opened_events = [ev async for ev in engine.stream(opening)]
        return answered, events, opened, opened_events

    answered, events, opened, opened_events = asyncio.run(scenario())
    raw = log.records[answered.answer_id]["raw_answer"]
    assert repeats_a_sentence(raw), raw  # the model still loops on this prompt ...
    assert not answered.refused and answered.answer and not repeats_a_sentence(answered.answer)  # ... the answer not
    assert answered.answer in raw  # cut, and any stock opening dropped (candor.generation.tidy)

    streamed = "".join(ev["text"] for ev in events if ev["event"] == "token")
    done = events[-1]["result"]
    assert events[-1]["event"] == "done" and not repeats_a_sentence(streamed)
    assert streamed.strip() == done.answer == answered.answer
    # the stream was closed at the repeat: the log keeps what had arrived, shorter than the full loop
    assert len(log.records[done.answer_id]["raw_answer"]) < len(raw)

    raw = log.records[opened.answer_id]["raw_answer"]
    assert raw.startswith("The answer is:") and "1185" in raw, raw  # the model's habit ...
    assert not opened.refused and opened.answer.startswith("1185"), opened.answer  # ... dropped from the answer
    streamed = "".join(ev["text"] for ev in opened_events if ev["event"] == "token")
    assert streamed.strip() == opened_events[-1]["result"].answer == opened.answer


class _ScriptedModel:
    """The model side of a unit test of the stream's handling: each request streams the scripted pieces."""

    adapter_id = None

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces

    async def info(self) -> ServerInfo:
        return ServerInfo("scripted", max_input_tokens=1024, max_total_tokens=2048)

    async def stream(self, **_):
        for piece in self.pieces:
            yield piece


@pytest.mark.parametrize(
    "pieces",
    [["   "], ["..."], ["The answer is:", " ..."], ["The ans", "wer to this question is:"]],
)
def test_a_stream_that_relays_no_word_ends_with_the_refusal_sentence(pieces, base_model_dir: Path) -> None:
    """Whitespace, punctuation or an opening alone is no answer: the client's tokens end with the refusal."""
    settings = load_settings(grounding_enforce=False, prompt_evidence="none")
    passages = FixedPassages()
    collection = passages.add("c", [ContextChunk("Candor splits documents into chunks of 256 tokens.", "Chunks")])
    engine = AnswerEngine(
        settings, passages, _ScriptedModel(pieces), PromptRenderer(base_model_dir), MemoryLog(), layers=MEASURE_ONLY
    )

    async def scenario():
        return [ev async for ev in engine.stream(AnswerRequest("How large are chunks?", collection, top_k=1))]

    events = asyncio.run(scenario())
    done = events[-1]["result"]
    assert done.refused and done.refusal_layer == "model"
    streamed = "".join(ev["text"] for ev in events if ev["event"] == "token")
    assert streamed.strip().endswith(done.answer), streamed
