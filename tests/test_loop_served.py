"""The loop's evaluation asks through the answer core: the in-process LLM generates what candor eval would."""

from __future__ import annotations

from pathlib import Path

import fixtures.finetune as ft_fixtures

from candor.decision import ALL_LAYERS, MEASURE_ONLY, RETRIEVAL_GATE
from candor.finetune.evaluate import BASE, LocalGenerator
from candor.prompts import ContextChunk, fit_messages
from candor.retrain.served import FixedPassages, LocalLLM, MemoryLog, answer_all
from candor.service.answering import AnswerEngine, AnswerRequest
from candor.service.chat_template import PromptRenderer
from candor.service.llm_client import ServerInfo
from candor.settings import Settings

ft_base_model = ft_fixtures.ft_base_model

PASSAGE = ContextChunk("The Eiffel Tower was completed in 1889 for the World's Fair in Paris.", "Eiffel Tower")
QUESTIONS = ["When was the Eiffel Tower completed?", "Who designed the Eiffel Tower?", "Where is the Eiffel Tower?"]


def test_the_answer_core_in_process_generates_what_the_generator_does(ft_base_model: Path) -> None:
    settings = Settings(base_model_path=ft_base_model, max_new_tokens=12)
    gen = LocalGenerator(ft_base_model, dtype="float32")
    renderer = PromptRenderer(ft_base_model)
    info = ServerInfo("base", 1024, settings.max_total_tokens)
    llm = LocalLLM(gen, BASE, renderer, info, batch_size=2)
    passages = FixedPassages()
    requests = [AnswerRequest(q, passages.add(f"q{i}", [PASSAGE]), top_k=1) for i, q in enumerate(QUESTIONS)]
    requests.append(AnswerRequest("What is the tower made of?", passages.add("none", []), top_k=1))
    log = MemoryLog()
    engine = AnswerEngine(settings, passages, llm, renderer, log, layers=MEASURE_ONLY)

    results = answer_all(engine, llm, requests)

    assert len(results) == 4 and len(log.records) == 4
    # no passage: the retrieval gate refuses before generation, as served
    assert results[3].refused and results[3].refusal_layer == RETRIEVAL_GATE
    assert log.records[results[3].answer_id]["prompt"] is None
    # the prompts the answer core fitted (budget: the server's limit less its margin), generated in one batch
    prompts = [
        renderer.render(fit_messages(q, [PASSAGE], [], renderer.count_tokens, 1024 - 8).messages) for q in QUESTIONS
    ]
    direct = gen.generate(sorted(prompts), BASE, 12, 2)
    by_prompt = dict(zip(sorted(prompts), direct, strict=True))
    for res in results[:3]:
        record = log.records[res.answer_id]
        text, alts, _ = by_prompt[record["prompt"]]
        assert record["raw_answer"] == text
        assert llm.outputs[record["prompt"]][1] == alts
        assert res.signals["first_token"] is not None

    # the same questions again, every layer on: the same generations, decided as served
    engine = AnswerEngine(settings, passages, llm, renderer, MemoryLog(), layers=ALL_LAYERS)
    again = answer_all(engine, llm, requests[:3])
    assert [r.signals["first_token"] for r in again] == [r.signals["first_token"] for r in results[:3]]
