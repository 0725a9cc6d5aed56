"""The int8 serving mode (``model_dtype="int8"``): dynamic int8 Linear weights, fp32 activations, CPU only.

The reference is the float32 engine (the weights int8 is quantized from), both with the shipped
refusal adapter, on real prompts: RAG-style prompts with context, a chat question, and the prompt on
which the adapter refuses. Greedy, a few tokens only. Claims tested: where float32 is decisive, int8
picks the same first token; the refusal probability moves by less than a tolerance. Not claimed: that
int8 keeps the adapter's borderline refusals (it does not always: docs/performance.md, int8 agreement).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fixtures.model import Collector

from candor.model_server.adapters import AdapterSpec
from candor.model_server.model_engine import GenerationJob, ModelEngine
from candor.prompts import REFUSAL_SENTENCE, ContextChunk, build_messages
from candor.refusal_score import refusal_token_probability
from candor.settings import Settings, load_settings

REFUSAL_ADAPTER = Path(__file__).resolve().parents[1] / "models" / "candor-refusal"

# Absolute difference allowed between the float32 and int8 engines' refusal probability (the mass on
# first tokens that begin REFUSAL_SENTENCE among the top 5, as the service computes it). Measured on
# these prompts: 0.03-0.08 on the answered ones, 0.12 on the refusing one (0.14 -> 0.02); with one
# weight scale per tensor instead of per output channel the top-token probability moved by up to 0.7.
# 0.15 is therefore a regression guard against that kind of breakage, not a claim of equivalence:
# the shipped adapter's refusal signal is itself only 0.10-0.16 on these prompts, so a shift of 0.12
# can change a thresholded decision (docs/performance.md, bench/results/int8_agreement.json).
REFUSAL_PROB_TOLERANCE = 0.15

_NILE = ContextChunk(
    "The Nile is a major north-flowing river in northeastern Africa. It flows into the Mediterranean Sea "
    "and is about 6,650 km long.",
    "Nile",
)
_NORMANS = ContextChunk(
    "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region "
    "in France. They were descended from Norse raiders and pirates from Denmark, Iceland and Norway.",
    "Normans",
)
_OXYGEN = ContextChunk(
    "Oxygen is a chemical element with symbol O and atomic number 8. It is a member of the chalcogen group "
    "and a highly reactive nonmetal.",
    "Oxygen",
)
_CANDOR = ContextChunk(
    "Candor's default embedding model, all-MiniLM-L6-v2, was trained on English text.", "FAQ: languages"
)

# (messages, adapter): RAG prompts on the base model and on the adapter, and a chat question. On all
# five the float32 model is decisive at the first token (top-1 ahead of top-2 by 1.0-1.6 nats).
CASES = [
    (build_messages("Into which sea does the Nile flow?", [_NILE]), None),
    (build_messages("What is the atomic number of oxygen?", [_OXYGEN, _NILE]), None),
    (build_messages("Where did the Normans come from?", [_NORMANS]), "refusal"),
    (build_messages("How long is the Nile?", [_NILE, _NORMANS]), "refusal"),
    ([{"role": "user", "content": "What is the capital of France? Answer in one word."}], None),
]
# The prompt on which the shipped adapter refuses (tests/test_model_adapters.py). Its refusal is
# borderline: "I" leads the float32 distribution by 0.14 nats only, with p = 0.14.
REFUSING = (build_messages("Which embedding model does Candor use?", [_CANDOR]), "refusal")


def _engine(base_model_dir: Path, dtype: str) -> ModelEngine:
    settings = load_settings(base_model_path=base_model_dir, model_dtype=dtype, model_server_threads=1)
    eng = ModelEngine(settings, [AdapterSpec("refusal", REFUSAL_ADAPTER)])
    eng.load()
    return eng


@pytest.fixture(scope="module")
def engines(base_model_dir: Path):
    pair = {"float32": _engine(base_model_dir, "float32"), "int8": _engine(base_model_dir, "int8")}
    yield pair
    for eng in pair.values():
        eng.stop()


def _first_steps(engine: ModelEngine, cases: list, n: int = 12) -> list:
    """Greedy generation for every case; each case's event list."""
    from candor.model_server.sampling import SamplingParams

    results = []
    for messages, adapter in cases:
        text = engine.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = engine.tokenizer(text)["input_ids"]
        sink = Collector()
        engine.submit(GenerationJob(ids, n, SamplingParams(top_n_tokens=5), adapter=adapter), sink)
        results.append(sink.finished())
    return results


def _refusal_p(events: list) -> float:
    return refusal_token_probability([(t.text, t.logprob) for t in events[0].top_tokens])


@pytest.mark.slow
def test_int8_engine_matches_float32_first_tokens_and_refusal_probability(engines) -> None:
    ref = _first_steps(engines["float32"], [*CASES, REFUSING])
    got = _first_steps(engines["int8"], [*CASES, REFUSING])
    assert engines["int8"].dtype == "int8"
    lm_head = engines["int8"].resolve(None).model.lm_head
    assert "quantized" in type(lm_head).__module__  # lm_head is quantized too (checked by the outputs below)
    for (messages, adapter), r, g in zip(CASES, ref, got, strict=False):
        top = r[0].top_tokens
        assert top[0].logprob - top[1].logprob > 0.5  # the premise: float32 is decisive here
        assert g[0].token.id == r[0].token.id, (messages[-1]["content"][-60:], adapter, r[0].token, g[0].token)
    for (messages, _), r, g in zip([*CASES, REFUSING], ref, got, strict=True):
        p_ref, p_int8 = _refusal_p(r), _refusal_p(g)
        assert abs(p_ref - p_int8) < REFUSAL_PROB_TOLERANCE, (messages[-1]["content"][-60:], p_ref, p_int8)
    assert ref[-1][-1].finish.generated_text.startswith(REFUSAL_SENTENCE[:20])  # float32 + adapter refuses


def test_int8_is_a_setting_and_loads_float32_weights() -> None:
    import torch

    from candor.model_server.adapters import load_dtype

    assert Settings(model_dtype="int8").model_dtype == "int8"
    assert load_dtype("int8") == torch.float32  # never torch.int8: that would truncate the weights
    assert load_dtype("bfloat16") == torch.bfloat16
    with pytest.raises(Exception, match="unknown model dtype"):
        load_dtype("int32")


def test_int8_refuses_weights_that_are_not_on_the_cpu() -> None:
    import torch

    from candor.errors import InvalidInputError
    from candor.model_server.adapters import quantize_int8

    model = torch.nn.Sequential(torch.nn.Linear(4, 4)).to("meta")  # stands in for a GPU: not CPU memory
    with pytest.raises(InvalidInputError, match="CPU only"):
        quantize_int8(model)


@pytest.mark.slow
def test_model_server_in_int8_generates_reports_dtype_and_hot_swaps(
    model_server_factory, tiny_adapter_dir: Path
) -> None:
    server = model_server_factory(args=["--dtype", "int8"])
    info = httpx.get(server.url + "/info", timeout=10).json()
    assert info["model_dtype"] == "int8"
    body = {"inputs": "The capital of France is", "parameters": {"max_new_tokens": 6, "do_sample": False}}
    r = httpx.post(server.url + "/generate", json=body, timeout=120)
    assert r.status_code == 200, r.text
    base_text = r.json()["generated_text"]
    assert base_text.strip()
    r = httpx.post(server.url + "/adapters", json={"name": "tiny", "path": str(tiny_adapter_dir)}, timeout=180)
    assert r.status_code in (200, 201), r.text
    body["parameters"]["adapter_id"] = "tiny"
    r = httpx.post(server.url + "/generate", json=body, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["generated_text"] != base_text  # the random adapter was merged and quantized, and is used
    assert "torch.ao.quantization.quantize_dynamic" in server.log()
