"""Generation hygiene (issue 18): the repeated-sentence guard, the shared decoding parameters, the evidence line."""

from __future__ import annotations

import asyncio
import json

import fixtures.finetune as ft_fixtures
import pytest
from fastapi import Request
from fixtures.model import ThreadedApp

from candor.generation import (
    GenerationParams,
    LeadIn,
    RepeatGuard,
    clip,
    cut_repeats,
    first_repeat,
    repeats_a_sentence,
    sentence_key,
    strip_lead_in,
    tidy,
)
from candor.prompts import ContextChunk, build_messages, evidence_text, fit_messages, gives_no_answer
from candor.settings import load_settings

ft_base_model = ft_fixtures.ft_base_model

# answers the shipped adapter gave on the handbook set (reports/eval-handbook-reader.md)
LOOPS = {
    "The answer is sent to port 8080.\n\nThe answer is sent to port 8000.\n\nThe answer is sent to port 12345.\n\n"
    "The answer is sent to port 12345.\n\nThe answer is sent to port": (
        "The answer is sent to port 8080.\n\nThe answer is sent to port 8000.\n\nThe answer is sent to port 12345."
    ),
    "1. The answer log on a laptop.\n2. The answer log on a server.\n3. The answer log on a server.\n4. The answer": (
        "1. The answer log on a laptop.\n2. The answer log on a server."
    ),
    "[5] (API key) # How is the API key sent?\n\nThe API key is sent in the API key header.\n\n"
    "[6] (API key) # How is the API key sent?\n\nThe API key": (
        "[5] (API key) # How is the API key sent?\n\nThe API key is sent in the API key header."
    ),
    "The answer to this question is: The answer to this question is: The answer to this": (
        "The answer to this question is:"
    ),
    "It is a refusal.\n\n## How a refusal is made\n\nA refusal is a feature.\n\n## How a refusal is made\n\nA": (
        "It is a refusal.\n\n## How a refusal is made\n\nA refusal is a feature."
    ),
}


def stream_through(text: str, step: int) -> tuple[str, list[str]]:
    """Feed ``text`` in pieces of ``step`` characters; what was relayed, and the relayed text after each piece."""
    guard, relayed, seen = RepeatGuard(), "", []
    for i in range(0, len(text), step):
        relayed += guard.feed(text[i : i + step])
        seen.append(relayed)
        if guard.stopped:
            break
    relayed += guard.finish()
    return relayed, seen


@pytest.mark.parametrize("raw", list(LOOPS))
def test_a_loop_is_cut_at_its_first_repeated_sentence(raw: str) -> None:
    assert repeats_a_sentence(raw)
    assert cut_repeats(raw) == LOOPS[raw]
    assert not repeats_a_sentence(cut_repeats(raw))
    assert raw[first_repeat(raw) :].strip().startswith(("The answer", "3.", "[6]", "## How"))
    assert cut_repeats("The answer is: 256. The answer is: 512.") == "The answer is: 256."


@pytest.mark.parametrize("step", [1, 2, 5, 17, 1000])
@pytest.mark.parametrize("raw", list(LOOPS))
def test_the_stream_never_relays_a_repeated_sentence(raw: str, step: int) -> None:
    relayed, seen = stream_through(raw, step)
    assert relayed.rstrip() == LOOPS[raw]
    for partial in seen:  # at no point did a client see the start of a repeat... beyond its held prefix
        assert not repeats_a_sentence(partial)
        assert LOOPS[raw].startswith(partial.rstrip()) or partial.rstrip().startswith(LOOPS[raw])


def test_a_sentence_that_might_repeat_is_held_until_it_diverges() -> None:
    guard = RepeatGuard()
    assert guard.feed("Paris is the capital. ") == "Paris is the capital. "
    assert guard.feed("Paris is") == ""  # the start of the earlier sentence: held
    assert guard.feed(" large.") == "Paris is large."  # it diverged: relayed
    assert guard.finish() == ""
    assert not guard.stopped


def test_an_unfinished_repeat_at_the_end_is_dropped_and_a_new_tail_is_kept() -> None:
    assert cut_repeats("The port is 8080. The port") == "The port is 8080."
    assert cut_repeats("The port is 8080. It listens") == "The port is 8080. It listens"
    assert cut_repeats("Yes. Yes. Yes.") == "Yes. Yes. Yes."  # one-word sentences are not compared
    assert cut_repeats("") == ""


def test_sentence_keys_ignore_case_punctuation_markup_and_numbering() -> None:
    assert sentence_key("## How a refusal is made") == sentence_key("how a REFUSAL is made!")
    assert sentence_key("[5] (API key) The key.") == sentence_key("[6] (API key) the key")
    assert sentence_key("3.") == ""
    assert not repeats_a_sentence("Version 3.5 was released. Version 3.6 was released.")


def test_generation_params_from_settings_and_in_tgi_words() -> None:
    s = load_settings(repetition_penalty=1.2, frequency_penalty=0.0, stop_sequences=["\n\n", ""], max_new_tokens=48)
    p = GenerationParams.from_settings(s)
    assert p == GenerationParams(max_new_tokens=48, repetition_penalty=1.2, frequency_penalty=0.0, stop=("\n\n",))
    assert p.tgi() == {"max_new_tokens": 48, "stop": ["\n\n"], "repetition_penalty": 1.2}
    assert GenerationParams.from_settings(s, 32).max_new_tokens == 32
    # the measured default (reports/generation-hygiene.md): a blank line, or a question the model starts itself
    assert load_settings().stop_sequences == ["\n\n", "\nQuestion:"]
    assert load_settings().repetition_penalty is None and load_settings().frequency_penalty is None
    assert GenerationParams().tgi() == {"max_new_tokens": 64, "stop": None}
    assert p.cut_stop("Paris.\n\nQuestion: x") == "Paris."
    assert clip("Paris.\n\nParis.", ["\n\n"]) == "Paris."


def _held(stops, pieces, final):
    from candor.generation import StopHold

    hold = StopHold(stops)
    out = [hold.feed(p) for p in pieces]
    return out, hold.finish(final)


def test_stop_hold_relays_nothing_of_a_stop_sequence() -> None:
    stops = ["\n\n", "\nQuestion:"]
    out, rest = _held(stops, ["Robert", " Boyle", "\n", "Question", ":", " Who"], "Robert Boyle")
    assert "".join(out) == "Robert Boyle" and rest == ""
    assert out[2] == out[3] == ""  # "\n" and "\nQuestion" may begin a stop sequence: held
    # a held beginning that diverges is released as it diverges
    out, rest = _held(stops, ["Paris", "\n", "Questions", " remain."], "Paris\nQuestions remain.")
    assert out == ["Paris", "", "\nQuestions", " remain."] and rest == ""
    # the stream ends on a held beginning: the final text releases it
    out, rest = _held(stops, ["Paris", "\n"], "Paris\n")
    assert "".join(out) == "Paris" and rest == "\n"
    # a sequence inside one piece; no stops at all
    out, rest = _held(stops, ["Lumen.\n\nQuestion: x"], "Lumen.")
    assert out == ["Lumen."] and rest == ""
    out, rest = _held([], ["a", "\n", "b"], "a\nb")
    assert out == ["a", "\n", "b"] and rest == ""
    # TGI matches a stop only at the end of the text: a token past one lets generation go on, and the
    # final text (cut by the client) is shorter than what streamed; nothing after the match is released
    out, rest = _held(stops, ["Paris", "\n", "Question", ":\n", "Who", "?"], "Paris")
    assert "".join(out) == "Paris" and rest == ""
    # a final text that differs from the stream: the stream's held rest is released, not lost
    out, rest = _held(stops, ["Paris", " ,", "\n"], "Paris,\n")
    assert "".join(out) + rest == "Paris ,\n"


def test_settings_reject_bad_generation_values() -> None:
    from candor.settings import SettingsError

    with pytest.raises((SettingsError, ValueError)):
        load_settings(repetition_penalty=0)
    with pytest.raises((SettingsError, ValueError)):
        load_settings(frequency_penalty=3)
    with pytest.raises((SettingsError, ValueError)):
        load_settings(prompt_evidence="everything")


# --- the stock opening --------------------------------------------------------------------------

# openings the tuned 135M model gave on dev (reports/eval-oracle-dev300-evidence-s200-predictions), and texts
# that only look like one
OPENINGS = {
    "The answer is: Guyard de Moulin": "Guyard de Moulin",
    'The answer to this question is: "Fresno architects"': '"Fresno architects"',
    "The answer to your question is: composite": "composite",
    "the answer to the question is:\n 3.62": "3.62",
    "Answer: Paris": "Paris",
    "The answer to this question is: I don't know based on the provided documents.": (
        "I don't know based on the provided documents."
    ),
    # the question restated inside the opening (handbook answers of the 400-step evidence adapter)
    'The answer to the question "What is Candor\'s chat endpoint?" is: /v1/chat': "/v1/chat",
    'The answer to the question "What is Candor\'s chat endpoint?" is:': "",
    "The answer to the question of which servers can serve the model on a GPU is: TGI or vLLM": "TGI or vLLM",
    'The answer to the question "What do flagged answers become?" is a question.': (
        'The answer to the question "What do flagged answers become?" is a question.'
    ),
    "The answer to the question is not available.": "The answer to the question is not available.",
    "The answer to the question \u201cWho?\u201d is: me": "me",
    'The answer to the question "Time: when?" is: 5pm': "5pm",  # a colon inside the quoted question
    # a hedge or a sentence after "the answer to ... question" is not an opening, even with "is:" later on
    "The answer to your question depends on the server. The primary one is: db-1": (
        "The answer to your question depends on the server. The primary one is: db-1"
    ),
    "The answer to this question is unclear; the docs say the port is: 8080": (
        "The answer to this question is unclear; the docs say the port is: 8080"
    ),
    "The answer to the question is complicated.\n- Step one is: reboot": (
        "The answer to the question is complicated.\n- Step one is: reboot"
    ),
    "The answer is 2.": "The answer is 2.",  # no colon: kept whole
    "The answer is not in the passages.": "The answer is not in the passages.",
    "The answer": "The answer",  # an unfinished opening is not one
    "Answers: two": "Answers: two",
    "Theory says: yes": "Theory says: yes",
    "1622": "1622",
    "": "",
}


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_a_stock_opening_is_dropped_on_a_stream_as_on_a_finished_text(step: int) -> None:
    for text, want in OPENINGS.items():
        assert strip_lead_in(text) == want, text
        lead, relayed = LeadIn(), ""
        for i in range(0, len(text), step):
            relayed += lead.feed(text[i : i + step])
            # nothing of the opening is ever relayed, only what follows it
            assert not (want != text and relayed and not want.startswith(relayed)), (text, relayed)
        assert relayed + lead.finish() == want, (text, step)


def test_tidy_cuts_the_repeat_then_the_opening_and_an_opening_alone_gives_no_answer() -> None:
    assert tidy("The answer is: 256. The answer is: 512.") == "256."
    # a short number after the opening is the answer, not a list number opening the next sentence
    assert tidy("The answer is: 12. The answer is: 12.") == "12."
    assert tidy("The answer is: 3.\nThe answer is: 3.") == "3."
    loop = "The answer to this question is: The answer to this question is: The answer to this"
    assert tidy(loop) == "" and gives_no_answer(tidy(loop))
    assert clip("The answer is: Paris.\n\nThe answer is: Paris.", ["\n\n"]) == "Paris."
    assert gives_no_answer("I don't know based on the provided documents.") and not gives_no_answer("Paris")


# --- the evidence line -------------------------------------------------------------------------

PASSAGE = "Candor keeps its log in a database. On a laptop that is SQLite. On a server it is Postgres."


def test_evidence_text_modes() -> None:
    at = PASSAGE.index("SQLite")
    assert evidence_text("sentence", PASSAGE, at, at + 6) == "On a laptop that is SQLite."
    assert evidence_text("span", PASSAGE, at, at + 6) == "SQLite"
    assert evidence_text("none", PASSAGE, at, at + 6) is None
    assert evidence_text("sentence", PASSAGE, -1, -1) is None  # the reader marked no span
    with pytest.raises(ValueError):
        evidence_text("all", PASSAGE, at, at + 6)


def test_the_evidence_line_sits_between_the_context_and_the_question() -> None:
    msgs = build_messages("Which database?", [ContextChunk(PASSAGE, "Log")], evidence="On a laptop that is SQLite.")
    assert msgs[-1]["content"].endswith("\n\nEvidence: On a laptop that is SQLite.\nQuestion: Which database?")
    assert "Evidence:" not in build_messages("Which database?", [ContextChunk(PASSAGE)])[-1]["content"]
    # fitting counts the line: a budget that fits the prompt without it drops a passage with it
    count = lambda m: len(" ".join(x["content"] for x in m).split())  # noqa: E731
    chunks = [ContextChunk(PASSAGE), ContextChunk("Another passage of nine words, give or take.")]
    plain = fit_messages("Which database?", chunks, [], count, 10_000)
    tight = fit_messages("Which database?", chunks, [], count, plain.tokens)
    assert tight.n_dropped == 0
    with_line = fit_messages("Which database?", chunks, [], count, plain.tokens, evidence="On a laptop that is SQLite.")
    assert with_line.tokens <= plain.tokens and (with_line.n_dropped or with_line.n_trimmed)
    assert "Evidence: On a laptop that is SQLite." in with_line.messages[-1]["content"]


# --- the client sends them --------------------------------------------------------------------------


class RecordingTGI(ThreadedApp):
    """A real HTTP server answering TGI's generate route, recording each request body."""

    def __init__(self) -> None:
        from fastapi import FastAPI

        self.bodies: list[dict] = []
        app = FastAPI()

        @app.post("/")
        async def generate(request: Request):
            self.bodies.append(await request.json())
            tok = {"id": 1, "text": "Hi", "logprob": -0.1, "special": False}
            details = {
                "finish_reason": "eos_token",
                "generated_tokens": 1,
                "seed": None,
                "prefill": [],
                "tokens": [tok],
            }
            return [{"generated_text": "Hi", "details": details}]

        super().__init__(app)


def test_the_client_sends_the_settings_generation_parameters() -> None:
    from candor.service.llm_client import LLMClient

    with RecordingTGI() as server:
        s = load_settings(llm_url=server.url, repetition_penalty=1.15, frequency_penalty=0.1, stop_sequences=["\n\n"])
        client = LLMClient(s)
        asyncio.run(client.generate(prompt="Q?"))
        asyncio.run(client.generate(prompt="Q?", stop=[], params=GenerationParams(max_new_tokens=5)))
        off = LLMClient(load_settings(llm_url=server.url))
        asyncio.run(off.generate(prompt="Q?"))
    served, overridden, plain = (b["parameters"] for b in server.bodies)
    assert served["repetition_penalty"] == 1.15 and served["frequency_penalty"] == 0.1
    assert served["stop"] == ["\n\n"] and served["max_new_tokens"] == s.max_new_tokens
    assert overridden.get("repetition_penalty") is None and not overridden.get("stop")
    assert overridden["max_new_tokens"] == 5
    assert plain.get("repetition_penalty") is None and plain.get("frequency_penalty") is None
    assert json.dumps(plain)  # plain JSON, nothing else sent


# --- the oracle applies the same parameters -----------------------------------------------------


def test_the_oracle_frequency_penalty_counts_prompt_and_output_but_not_padding() -> None:
    import torch

    from candor.finetune.evaluate import _FrequencyPenalty

    ids = torch.tensor([[0, 0, 3, 3], [2, 3, 3, 3]])  # row 0 is left-padded with two pad tokens (id 0)
    scores = torch.zeros(2, 5)
    out = _FrequencyPenalty(0.5, pads=[2, 0])(ids, scores)
    assert out[0].tolist() == [0.0, 0.0, 0.0, -1.0, 0.0]  # the padding counts nothing
    assert out[1].tolist() == [0.0, 0.0, -0.5, -1.5, 0.0]


@pytest.mark.slow
def test_the_oracle_generator_applies_the_served_parameters(ft_base_model) -> None:
    from candor.finetune.evaluate import BASE, LocalGenerator
    from candor.prompts import build_messages

    gen = LocalGenerator(ft_base_model, dtype="float32")
    prompts = [gen.render(build_messages("Describe Paris in three sentences.", []))]
    ((plain, _, _),) = gen.generate(prompts, BASE, 24)
    words = plain.split()
    assert len(words) > 4
    stop = " " + words[3]
    ((stopped, _, _),) = gen.generate(prompts, BASE, 24, params=GenerationParams(24, stop=(stop,)))
    assert stopped == plain[: plain.find(stop)].strip()
    ((penalised, _, _),) = gen.generate(prompts, BASE, 24, params=GenerationParams(24, repetition_penalty=3.0))
    assert penalised != plain
