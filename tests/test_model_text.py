"""Pieces of the server's text path with the real tokenizer: detokenising, stops, sampling, templates."""

from __future__ import annotations

from pathlib import Path

import pytest

from candor.errors import InvalidInputError, NotFoundError
from candor.generation import StopHold
from candor.model_server.openai_protocol import cut_at_stop, resolve_model
from candor.model_server.token_text import IncrementalDetokenizer, find_stop
from candor.service.chat_template import PromptRenderer
from candor.settings import apply_thread_settings

pytestmark = pytest.mark.slow  # they load the real tokenizer

MESSAGES = [
    {"role": "system", "content": "You are Candor."},
    {"role": "user", "content": "Où est la tour Eiffel? 東京 🗼"},
]


@pytest.fixture(scope="module")
def tokenizer(base_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_model_dir, local_files_only=True)


def test_streamed_pieces_concatenate_to_the_decoded_text(tokenizer) -> None:
    text = "Naïve café — 東京タワー 🗼🎉 done."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    detok = IncrementalDetokenizer(tokenizer, set(tokenizer.all_special_ids))
    pieces = [detok.add(i)[0] for i in ids]
    pieces.append(detok.flush())
    assert "".join(pieces) == tokenizer.decode(ids) == text
    assert all("\ufffd" not in p for p in pieces)
    assert "" in pieces  # some tokens held half a character back


def test_special_tokens_are_reported_but_not_added_to_the_text(tokenizer) -> None:
    detok = IncrementalDetokenizer(tokenizer, set(tokenizer.all_special_ids))
    ids = tokenizer("Paris", add_special_tokens=False)["input_ids"]
    for i in ids:
        detok.add(i)
    piece, special = detok.add(tokenizer.eos_token_id)
    assert special and piece == "<|im_end|>"
    assert detok.text == "Paris"


def test_find_stop_sees_a_stop_split_across_pieces() -> None:
    assert find_stop("Answer: yes\n\nQ", "\n\nQ", ["\n\nQ"]) == "\n\nQ"
    assert find_stop("Answer: yes\n\nQ", "Q", ["\n\nQ"]) == "\n\nQ"
    assert find_stop("Answer: yes", "yes", ["\n\nQ", "END"]) is None
    assert find_stop("END of it", "", ["END"]) is None  # an empty piece completes nothing


def test_the_stop_hold_never_releases_a_stop_sequence() -> None:
    # The last piece completes the stop: the server finishes instead of feeding it.
    trimmer = StopHold(("###",))
    out = "".join(trimmer.feed(p) for p in ["Hel", "lo #", "#"])
    assert "#" not in out
    final = cut_at_stop("Hello ### tail", "###")
    out += trimmer.finish(final)
    assert out == "Hello " == final


def test_openai_model_field_maps_to_adapters() -> None:
    base = "HuggingFaceTB/SmolLM2-135M-Instruct"
    for name in (None, "", "tgi", "dummy", base, "SmolLM2-135M-Instruct", "http://127.0.0.1:8080"):
        assert resolve_model(name, base) is None
    assert resolve_model("refusal", base) == "refusal"


def test_sampling_is_seeded_and_greedy_is_argmax() -> None:
    apply_thread_settings(1)
    import torch

    from candor.model_server.sampling import SamplingParams, TokenChooser

    logits = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    greedy = TokenChooser(SamplingParams(top_n_tokens=3), []).choose(logits)
    assert greedy.token_id == int(torch.argmax(logits))
    assert [t for t, _ in greedy.top][0] == greedy.token_id
    assert greedy.top == sorted(greedy.top, key=lambda x: -x[1])
    assert abs(greedy.logprob - float(torch.log_softmax(logits, -1).max())) < 1e-5

    params = SamplingParams(do_sample=True, seed=42, top_k=50, top_p=0.9)
    a = [TokenChooser(params, []).choose(logits).token_id for _ in range(3)]
    assert len(set(a)) == 1  # same seed, same choice
    many = TokenChooser(SamplingParams(do_sample=True, seed=1, top_k=5), [])
    picks = {many.choose(logits).token_id for _ in range(50)}
    assert picks <= set(torch.topk(logits, 5).indices.tolist()) and len(picks) > 1


def test_repetition_penalty_lowers_seen_tokens() -> None:
    apply_thread_settings(1)
    import torch

    from candor.model_server.sampling import SamplingParams, TokenChooser

    logits = torch.tensor([5.0, 4.9, 1.0])
    plain = TokenChooser(SamplingParams(), [0]).choose(logits)
    penalised = TokenChooser(SamplingParams(repetition_penalty=1.5), [0]).choose(logits)
    assert plain.token_id == 0 and penalised.token_id == 1


def test_prompt_renderer_uses_the_model_template(base_model_dir: Path, tokenizer) -> None:
    renderer = PromptRenderer(base_model_dir)
    text = renderer.render(MESSAGES)
    assert text == tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are Candor.<|im_end|>")
    assert text.endswith("<|im_start|>assistant\n")
    assert renderer.count_tokens(MESSAGES) == len(tokenizer(text)["input_ids"])


def test_prompt_renderer_errors(tmp_path: Path, base_model_dir: Path) -> None:
    with pytest.raises(NotFoundError, match="candor model prepare"):
        PromptRenderer(tmp_path).render(MESSAGES)
    renderer = PromptRenderer(base_model_dir)
    with pytest.raises(InvalidInputError):
        renderer.render([])
    with pytest.raises(InvalidInputError, match="message 0"):
        renderer.render([{"role": "user"}])
