"""Candor's refusal policy, in layers, each recorded on the answer.

1. retrieval gate: nothing retrieved, or nothing above ``min_retrieval_score``:
   refuse without calling the model;
2. the answerability layer (when configured: the extractive reader, or the older
   verifier): refuse before generating when 1 - P(answerable), raised by a weak
   best retrieval match, reaches its threshold;
3. the model's own refusal, detected robustly (``candor.prompts.is_refusal``),
   and optionally a confidence threshold on the model's first token;
4. grounding: how much of the answer the retrieved context supports (and, with
   the reader, whether it shares anything with the evidence span); an
   unsupported answer is marked ``grounded: false`` and, when enforced, turned
   into the refusal sentence.
Pure functions; the answer core calls them. Every threshold is applied by ``candor.decision.decide``,
the one rule serving, ``candor eval`` and the retraining gate share.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from candor.decision import GROUNDING, MODEL, READER, RETRIEVAL_GATE, THRESHOLD, VERIFIER, decide
from candor.prompts import gives_no_answer, normalize_text
from candor.stopwords import FUNCTION_WORDS

__all__ = ["GROUNDING", "MODEL", "READER", "RETRIEVAL_GATE", "THRESHOLD", "VERIFIER"]

# Words that carry no evidence: an answer is grounded by its content words.
_STOPWORDS = FUNCTION_WORDS | {"after", "before", "also", "one", "ones"}


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reason: str


def retrieval_gate(scores: Sequence[float], min_score: float) -> GateDecision:
    if not scores:
        return GateDecision(False, "no chunks were retrieved")
    best = max(scores)
    if best < min_score:
        return GateDecision(False, f"best retrieval score {best:.3f} is below the gate {min_score:.3f}")
    return GateDecision(True, f"best retrieval score {best:.3f}")


def content_tokens(text: str) -> list[str]:
    return [t for t in normalize_text(text).split() if t not in _STOPWORDS]


def _light_stem(token: str) -> str:
    if len(token) > 4 and token.endswith("ies"):
        return token[:-3] + "y"
    for suffix in ("ing", "ed", "es", "s"):
        if len(token) > len(suffix) + 2 and token.endswith(suffix):
            return token[: -len(suffix)]
    return token


_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\n\s*\n")


def evidence_sentence(passage: str, start: int, end: int) -> str:
    """The sentence(s) of ``passage`` holding the evidence span [start, end): what the grounding check compares.

    The span itself is often one number or name ("256", "Chroma"); a correct answer worded around it may still
    share no word with it, while an answer sharing nothing with its sentence rests on other text.
    """
    breaks = [(m.start(), m.end()) for m in _SENTENCE_BREAK.finditer(passage)]
    left = max((b_end for b_start, b_end in breaks if b_end <= start), default=0)
    right = min((b_start for b_start, _ in breaks if b_start >= end), default=len(passage))
    return passage[left:right]


def grounding_support(answer: str, contexts: Sequence[str]) -> float | None:
    """Share of the answer's content words (lightly stemmed) found in the context.

    Numbers must match exactly. Returns None when the answer has no content
    words to check (then grounding cannot say anything).
    """
    tokens = content_tokens(answer)
    if not tokens:
        return None
    context_tokens = set()
    for ctx in contexts:
        context_tokens.update(normalize_text(ctx).split())
    stems = {_light_stem(t) for t in context_tokens}
    supported = 0
    for tok in tokens:
        if tok in context_tokens or (not re.fullmatch(r"\d+", tok) and _light_stem(tok) in stems):
            supported += 1
    return supported / len(tokens)


@dataclass(frozen=True)
class PolicyOutcome:
    refused: bool
    layer: str | None
    grounded: bool | None
    support: float | None


def judge_answer(
    answer: str,
    contexts: Sequence[str],
    *,
    refusal_confidence: float | None,
    refusal_threshold: float | None,
    min_support: float,
    enforce_grounding: bool,
    evidence: str | None = None,
) -> PolicyOutcome:
    """Layers 2 and 3 on a generated answer.

    With the reader's evidence (the sentence holding its span: ``evidence_sentence``), an answer that shares
    no content word with it is not grounded, however much of it the passages as a whole support.
    """
    layer = decide(refusal_confidence, refusal_threshold, model_refused=gives_no_answer(answer))
    if layer is not None:
        return PolicyOutcome(True, layer, None, None)
    support = grounding_support(answer, contexts)
    grounded = None if support is None else support >= min_support
    if grounded and evidence and not grounding_support(answer, [evidence]):
        grounded = False
    if grounded is False and enforce_grounding:
        return PolicyOutcome(True, GROUNDING, False, support)
    return PolicyOutcome(False, None, grounded, support)
