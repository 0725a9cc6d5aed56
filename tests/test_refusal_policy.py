"""The refusal layers as pure functions."""

from candor.prompts import REFUSAL_SENTENCE
from candor.service.refusal_policy import grounding_support, judge_answer, retrieval_gate

CTX = ["The Normans gave their name to Normandy, a region in France, in the 10th and 11th centuries."]


def judge(answer, **kw):
    args = dict(refusal_confidence=None, refusal_threshold=None, min_support=0.5, enforce_grounding=True)
    args.update(kw)
    return judge_answer(answer, CTX, **args)


def test_gate_refuses_empty_and_low_scores():
    assert not retrieval_gate([], 0.3).passed
    assert not retrieval_gate([0.1, 0.29], 0.3).passed
    assert retrieval_gate([0.1, 0.31], 0.3).passed


def test_grounding_support_counts_context_words():
    assert grounding_support("France", CTX) == 1.0
    assert grounding_support("in the 10th century", CTX) == 1.0  # stemming: century/centuries
    assert grounding_support("Spain and Portugal", CTX) == 0.0
    assert grounding_support("the of", CTX) is None  # nothing to check
    assert grounding_support("in 1066", CTX) == 0.0  # numbers match exactly


def test_model_refusal_layer():
    out = judge(REFUSAL_SENTENCE)
    assert out.refused and out.layer == "model"
    for nothing in ("", "  ", "..."):  # an answer that was only a stock opening (candor.generation.tidy)
        out = judge(nothing, enforce_grounding=False)
        assert out.refused and out.layer == "model", nothing


def test_threshold_layer_only_when_configured():
    assert not judge("France", refusal_confidence=0.9).refused
    out = judge("France", refusal_confidence=0.9, refusal_threshold=0.5)
    assert out.refused and out.layer == "threshold"


def test_ungrounded_answer_becomes_refusal_when_enforced():
    out = judge("Spain and Portugal")
    assert out.refused and out.layer == "grounding" and out.grounded is False
    out = judge("Spain and Portugal", enforce_grounding=False)
    assert not out.refused and out.grounded is False


def test_grounded_answer_passes():
    out = judge("Normandy, in France")
    assert not out.refused and out.grounded is True and out.support == 1.0


def test_an_answer_sharing_nothing_with_the_evidence_span_is_not_grounded():
    # supported by the passage as a whole, but the reader's evidence is elsewhere
    out = judge("Normandy, in France", evidence="the 10th and 11th centuries")
    assert out.refused and out.layer == "grounding" and out.grounded is False and out.support == 1.0
    assert not judge("in the 10th century", evidence="the 10th and 11th centuries").refused
    assert not judge("Normandy, in France", evidence="").refused  # no span marked: the passages decide


def test_the_evidence_sentence_is_the_sentence_holding_the_span():
    from candor.service.refusal_policy import evidence_sentence

    text = "Candor splits documents. Chunks are about 256 tokens long. They overlap.\n\n## Next\nMore text."
    start = text.index("256")
    assert evidence_sentence(text, start, start + 3) == "Chunks are about 256 tokens long."
    assert evidence_sentence(text, 0, 6) == "Candor splits documents."
    assert evidence_sentence(text, text.index("More"), len(text)) == "## Next\nMore text."
    # grounded against the sentence: "The chunks are 256 tokens" shares "256" and "tokens" with it
    assert not judge("Normandy, in France", evidence="Normandy is a region in France.").refused
