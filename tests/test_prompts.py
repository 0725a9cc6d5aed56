"""The prompt contract: template, refusal detection, fitting to a token budget."""

import pytest

from candor.prompts import (
    REFUSAL_SENTENCE,
    SYSTEM_PROMPT,
    ContextChunk,
    PromptTooLong,
    build_messages,
    fit_messages,
    is_refusal,
)


def words(messages):
    return sum(len(m["content"].split()) for m in messages)


def test_messages_carry_system_anchor_numbered_context_and_question():
    msgs = build_messages("Who?", [ContextChunk("Alpha text", "A"), ContextChunk("Beta text")])
    assert msgs[0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert REFUSAL_SENTENCE in SYSTEM_PROMPT
    user = msgs[-1]["content"]
    assert "[1] (A) Alpha text" in user and "[2] Beta text" in user
    assert user.endswith("Question: Who?")


def test_training_example_appends_the_answer():
    msgs = build_messages("Who?", [], answer=REFUSAL_SENTENCE)
    assert msgs[-1] == {"role": "assistant", "content": REFUSAL_SENTENCE}
    assert "(no passages)" in msgs[-2]["content"]


@pytest.mark.parametrize(
    "text",
    [
        REFUSAL_SENTENCE,
        "I don't know based on the provided documents",
        "i dont know based on the provided document.",
        "I do not know.",
        "The context does not mention the price.",
        "This is not mentioned in the passages.",
        "I cannot answer that from the documents.",
    ],
)
def test_refusals_are_detected(text):
    assert is_refusal(text)


@pytest.mark.parametrize(
    "text",
    ["France", "In the 10th century", "Rollo, the Norse leader", "", "I know: it is 1066", "Denmark"],
)
def test_answers_are_not_refusals(text):
    assert not is_refusal(text)


def test_fit_keeps_everything_when_it_fits():
    chunks = [ContextChunk("one two three"), ContextChunk("four five")]
    fitted = fit_messages("q?", chunks, [], words, 1000)
    assert fitted.chunks == chunks and fitted.n_dropped == 0 and fitted.n_trimmed == 0


def test_fit_drops_lowest_ranked_chunks_first_then_history_then_trims():
    chunks = [ContextChunk("a " * 30), ContextChunk("b " * 30), ContextChunk("c " * 30)]
    history = [{"role": "user", "content": "h " * 20}, {"role": "assistant", "content": "i " * 20}]
    base = words(build_messages("q?", [], []))
    # room for one chunk and the history: the two lowest chunks go, history stays
    fitted = fit_messages("q?", chunks, history, words, base + 32 + 40 + 2)
    assert [c.text for c in fitted.chunks] == [chunks[0].text] and fitted.history_turns == 2
    # less room: history goes before the top chunk
    fitted = fit_messages("q?", chunks, history, words, base + 33)
    assert fitted.history_turns == 0 and fitted.chunks[0].text == chunks[0].text
    # even less: the top chunk is trimmed, never exceeding the budget
    fitted = fit_messages("q?", chunks, history, words, base + 12)
    assert fitted.n_trimmed == 1 and fitted.tokens <= base + 12
    assert fitted.chunks[0].text.startswith("a a") and fitted.chunks[0].text.endswith("...")


def test_fit_refuses_a_question_that_cannot_fit():
    with pytest.raises(PromptTooLong):
        fit_messages("word " * 100, [ContextChunk("x")], [], words, 20)
