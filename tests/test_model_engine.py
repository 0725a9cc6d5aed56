"""The engine in-process with the real model: continuous batching, cancellation, adapters, hot swap.

float32 here: in bf16 a row's numbers depend slightly on what else is in the
batch (different GEMM shapes round differently), so exact equality of batched
and sequential greedy output is only a fair test in float32.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fixtures.model import Collector

from candor.model_server.adapters import AdapterSpec
from candor.model_server.model_engine import EngineNotReady, GenerationJob, ModelEngine, UnknownAdapter
from candor.settings import load_settings

pytestmark = pytest.mark.slow

QUESTIONS = [
    "What is the capital of France?",
    "Name three colors.",
    "Who wrote Hamlet? Explain in detail.",
    "Tell me a story about a cat.",
    "What is 2+2?",
]


@pytest.fixture(scope="module")
def engine(base_model_dir: Path, tiny_adapter_dir: Path):
    settings = load_settings(
        base_model_path=base_model_dir, model_dtype="float32", model_server_threads=1, max_batch_size=4
    )
    eng = ModelEngine(settings, [AdapterSpec("tiny", tiny_adapter_dir)])
    eng.load()
    yield eng
    eng.stop()


def prompt_ids(engine: ModelEngine, question: str) -> list[int]:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}]
    text = engine.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return engine.tokenizer(text)["input_ids"]


def job(engine: ModelEngine, question: str, n: int = 24, adapter: str | None = None, **sampling) -> GenerationJob:
    from candor.model_server.sampling import SamplingParams

    return GenerationJob(prompt_ids(engine, question), n, SamplingParams(top_n_tokens=2, **sampling), adapter=adapter)


def run(engine: ModelEngine, j: GenerationJob):
    c = Collector()
    engine.submit(j, c)
    return c.wait(), c.events


def test_concurrent_requests_are_batched_and_match_sequential_output(engine: ModelEngine) -> None:
    sequential = {q: run(engine, job(engine, q))[0].finish.generated_text for q in QUESTIONS}
    assert engine.stats.max_batch_rows == 1
    collectors = {q: Collector() for q in QUESTIONS}
    for q in QUESTIONS:  # five at once, batch cap 4: one waits for a free row
        engine.submit(job(engine, q), collectors[q])
    batched = {q: c.wait().finish.generated_text for q, c in collectors.items()}
    assert batched == sequential
    assert engine.stats.max_batch_rows == 4


def test_stream_pieces_and_details_are_consistent(engine: ModelEngine) -> None:
    last, events = run(engine, job(engine, QUESTIONS[3], n=12))
    assert [e.index for e in events] == list(range(len(events)))
    assert "".join(e.token.text for e in events if not e.token.special) == last.finish.generated_text
    assert last.finish.finish_reason == "length" and last.finish.generated_tokens == 12
    first = events[0]
    assert len(first.top_tokens) == 2 and first.top_tokens[0].id == first.token.id  # greedy picks the top
    assert first.top_tokens[0].logprob >= first.top_tokens[1].logprob


def test_stop_sequence_and_eos(engine: ModelEngine) -> None:
    full = run(engine, job(engine, QUESTIONS[0], n=40))[0].finish
    assert full.finish_reason == "eos_token" and full.generated_text == "The capital of France is Paris."
    from candor.model_server.sampling import SamplingParams

    stopped = run(engine, GenerationJob(prompt_ids(engine, QUESTIONS[0]), 40, SamplingParams(), stop=(" France",)))[
        0
    ].finish
    assert stopped.finish_reason == "stop_sequence" and stopped.stop_sequence == " France"
    assert stopped.generated_text == "The capital of France"


def test_seeded_sampling_is_reproducible_inside_a_batch(engine: ModelEngine) -> None:
    alone = run(engine, job(engine, QUESTIONS[3], n=16, do_sample=True, seed=7))[0].finish
    a, b = Collector(), Collector()
    engine.submit(job(engine, QUESTIONS[3], n=16, do_sample=True, seed=7), a)
    engine.submit(job(engine, QUESTIONS[1], n=16, do_sample=True, seed=8), b)
    assert a.wait().finish.generated_text == alone.generated_text
    assert alone.seed == 7


def test_cancelled_request_leaves_the_batch(engine: ModelEngine) -> None:
    c = Collector()
    handle = engine.submit(job(engine, QUESTIONS[3], n=200), c)
    while len(c.events) < 3:
        threading.Event().wait(0.05)
    handle.cancel()
    after = run(engine, job(engine, QUESTIONS[4], n=8))[0]
    assert after.finish is not None
    assert len(c.events) < 200 and not c.done.is_set()
    for _ in range(100):  # the gauge is refreshed at the end of the worker's turn
        if engine.stats.running_rows == 0:
            break
        threading.Event().wait(0.05)
    assert engine.stats.running_rows == 0


def test_adapter_changes_output_only_when_selected(engine: ModelEngine) -> None:
    base = run(engine, job(engine, QUESTIONS[0]))[0].finish.generated_text
    tuned = run(engine, job(engine, QUESTIONS[0], adapter="tiny"))[0].finish.generated_text
    again = run(engine, job(engine, QUESTIONS[0]))[0].finish.generated_text
    assert tuned != base and again == base
    with pytest.raises(UnknownAdapter, match="'nope' is not loaded.*tiny"):
        engine.submit(job(engine, QUESTIONS[0], adapter="nope"), Collector())


def test_hot_swap_keeps_running_requests_on_their_weights(
    engine: ModelEngine, base_model_dir: Path, tmp_path: Path
) -> None:
    from fixtures.model import make_tiny_adapter

    other = make_tiny_adapter(base_model_dir, tmp_path / "other", seed=5)
    old = run(engine, job(engine, QUESTIONS[1], n=20, adapter="swap"))[0] if engine.has_adapter("swap") else None
    assert old is None
    engine.load_adapter(AdapterSpec("swap", engine.adapter_specs[0].path))
    before = run(engine, job(engine, QUESTIONS[1], n=20, adapter="swap"))[0].finish.generated_text
    running = Collector()
    engine.submit(job(engine, QUESTIONS[1], n=20, adapter="swap"), running)
    info = engine.load_adapter(AdapterSpec("swap", other))  # replaced while the request runs
    assert running.wait().finish.generated_text == before
    after = run(engine, job(engine, QUESTIONS[1], n=20, adapter="swap"))[0].finish.generated_text
    assert after != before
    assert {a.name: a.version for a in engine.adapters()}["swap"] == info.version
    engine.remove_adapter("swap")
    assert not engine.has_adapter("swap")


def test_not_ready_engine_refuses_work(base_model_dir: Path) -> None:
    eng = ModelEngine(load_settings(base_model_path=base_model_dir))
    with pytest.raises(EngineNotReady, match="created"):
        eng.submit(GenerationJob([1, 2], 1, None), Collector())


LONG_CONTEXT = (
    "Context: The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, "
    "a region in France. They were descended from Norse raiders and pirates from Denmark, Iceland and Norway "
    "who, under their leader Rollo, agreed to swear fealty to King Charles III of West Francia. "
)


def submit_together(engine: ModelEngine, jobs: list[GenerationJob]) -> list[Collector]:
    """Queue every job before the worker can take any, so that they reach one prefill turn together."""
    collectors = [Collector() for _ in jobs]
    with engine._cond:  # the worker takes waiting requests under this (re-entrant) lock
        for j, c in zip(jobs, collectors, strict=True):
            engine.submit(j, c)
    return collectors


def test_batched_prefill_matches_serial_prefill(engine: ModelEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Prompts of different lengths prefilled in one left-padded pass give each the tokens it gets alone."""
    monkeypatch.setattr(engine, "prefill_token_budget", 4096)  # room for all four, whatever the default
    jobs = [
        job(engine, QUESTIONS[4]),  # the shortest prompt: most left padding
        job(engine, LONG_CONTEXT * 3 + QUESTIONS[2]),  # the longest: sets the width
        job(engine, QUESTIONS[3], n=1),  # done at its first token: its row leaves the new batch at once
        job(engine, LONG_CONTEXT + QUESTIONS[0]),
    ]
    assert len({len(j.input_ids) for j in jobs}) == len(jobs)
    alone = [run(engine, j)[0].finish for j in jobs]
    passes_before = engine.stats.prefill_passes
    together = [c.wait().finish for c in submit_together(engine, jobs)]
    assert engine.stats.prefill_passes == passes_before + 1  # all four in one forward pass
    assert engine.stats.max_prefill_rows == len(jobs)
    assert [f.generated_text for f in together] == [f.generated_text for f in alone]
    assert [f.finish_reason for f in together] == [f.finish_reason for f in alone]
    assert together[2].generated_tokens == 1


def test_prefill_passes_split_by_weights_and_budget(engine: ModelEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    short, long = job(engine, QUESTIONS[0]), job(engine, LONG_CONTEXT * 3 + QUESTIONS[1])
    # budget: the two short prompts fit in one pass, the long one does not fit beside them
    monkeypatch.setattr(engine, "prefill_token_budget", 2 * len(short.input_ids))
    jobs = [short, job(engine, QUESTIONS[0], n=12), long, job(engine, QUESTIONS[0], adapter="tiny")]
    alone = [run(engine, j)[0].finish.generated_text for j in jobs]
    passes_before = engine.stats.prefill_passes
    together = [c.wait().finish.generated_text for c in submit_together(engine, jobs)]
    assert engine.stats.prefill_passes == passes_before + 3  # [short, short], [long], then the adapter's apart
    assert together == alone
