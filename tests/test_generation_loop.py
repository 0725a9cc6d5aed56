"""Issue 18, with the real model: a prompt on which the shipped adapter looped in the handbook run
(reports/eval-handbook-reader.md, hb-a22) gives an answer without a repeated sentence, answered or streamed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from fixtures.core import REPO_ROOT

from candor.decision import MEASURE_ONLY
from candor.generation import repeats_a_sentence
from candor.prompts import ContextChunk
from candor.retrain.served import FixedPassages, MemoryLog
from candor.service.answering import AnswerEngine, AnswerRequest
from candor.service.chat_template import PromptRenderer
from candor.service.llm_client import LLMClient
from candor.settings import load_settings

LOOP = json.loads((Path(__file__).parent / "fixtures" / "handbook_loop.json").read_text(encoding="utf-8"))


@pytest.mark.slow
def test_the_answer_core_cuts_the_loop_the_shipped_adapter_made(model_server_factory, base_model_dir: Path) -> None:
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

    async def scenario():
        answered = await engine.answer(request)
        events = [ev async for ev in engine.stream(request)]
        return answered, events

    answered, events = asyncio.run(scenario())
    raw = log.records[answered.answer_id]["raw_answer"]
    assert repeats_a_sentence(raw), raw  # the model still loops on this prompt ...
    assert not answered.refused and answered.answer and not repeats_a_sentence(answered.answer)  # ... the answer not
    assert raw.startswith(answered.answer)

    streamed = "".join(ev["text"] for ev in events if ev["event"] == "token")
    done = events[-1]["result"]
    assert events[-1]["event"] == "done" and not repeats_a_sentence(streamed)
    assert streamed.strip() == done.answer == answered.answer
    # the stream was closed at the repeat: the log keeps what had arrived, shorter than the full loop
    assert len(log.records[done.answer_id]["raw_answer"]) < len(raw)
