"""Refusal confidence from what a generation server returns, one definition.

The service applies ``settings.refusal_threshold`` to this number, and
``candor eval`` measures with exactly this function, so the measured
trade-off is the served one. Inputs are what the TGI protocol gives (the first
generated token's ``top_n_tokens`` alternatives with logprobs; OpenAI's
``top_logprobs`` is the same shape) plus the retrieval scores. Pure Python:
ground level, no heavy imports.

Signal: the probability mass the model puts, at its first answer token, on
tokens that begin the refusal sentence. The top alternatives carry nearly all
of the mass for a tuned model, so the sum over them is a tight lower bound.
When retrieval scores are given, a weak best match raises the confidence
(a soft version of the service's retrieval gate): r = clip((HI - best) / (HI - LO)),
combined as 1 - (1 - p_refusal)(1 - r).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from candor.prompts import REFUSAL_SENTENCE

RETRIEVAL_LO = 0.15  # best cosine at or below this: retrieval alone says "refuse"
RETRIEVAL_HI = 0.35  # best cosine at or above this: retrieval adds nothing


def _starts_refusal(token: str) -> bool:
    t = token.strip()
    return bool(t) and REFUSAL_SENTENCE.startswith(t)


def refusal_token_probability(first_token_top: Sequence[tuple[str, float]]) -> float:
    """Probability mass on first tokens that begin the refusal sentence (logprobs in, probability out)."""
    p = 0.0
    for token, logprob in first_token_top:
        if logprob is not None and _starts_refusal(token):
            p += math.exp(logprob)
    return min(max(p, 0.0), 1.0)


def retrieval_refusal(retrieval_scores: Sequence[float] | None) -> float:
    if not retrieval_scores:
        return 0.0
    best = max(retrieval_scores)
    return min(max((RETRIEVAL_HI - best) / (RETRIEVAL_HI - RETRIEVAL_LO), 0.0), 1.0)


def refusal_confidence(
    first_token_top: Sequence[tuple[str, float]] | None,
    retrieval_scores: Sequence[float] | None = None,
    answerable_probability: float | None = None,
) -> float | None:
    """How sure we are the answer should be a refusal, in [0, 1]; refuse at or above the threshold.

    With an answerability verifier's P(answerable) the signal is 1 - P (the first token is then not
    needed, so the decision can come before generation); without one it is the first token's refusal
    mass. None when neither is known: unknown, so no threshold applies.
    """
    if answerable_probability is not None:
        p = 1.0 - min(max(answerable_probability, 0.0), 1.0)
    elif first_token_top is None:
        return None
    else:
        p = refusal_token_probability(first_token_top)
    r = retrieval_refusal(retrieval_scores)
    return 1.0 - (1.0 - p) * (1.0 - r)
