"""Choosing the next token for one sequence, with TGI's parameter semantics.

Order, as in TGI's ``NextTokenChooser``: repetition penalty, frequency
penalty, temperature; the log-probabilities reported (the chosen token's and
the ``top_n_tokens`` alternatives) come from that distribution, before top-k /
top-p / typical-p truncation, so greedy requests report the model's own
distribution (the service reads the first token's alternatives as a refusal
confidence). Sampling is on when ``do_sample`` is set or any warper is (TGI's
rule); each sampling request has its own seeded generator, so a seed gives the
same text whatever else is in the batch.

Only imported by the model engine (torch at module level is fine there).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SamplingParams:
    do_sample: bool = False
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    typical_p: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    top_n_tokens: int = 0

    @property
    def sampling(self) -> bool:
        return (
            self.do_sample
            or (self.temperature is not None and self.temperature != 1.0)
            or (self.top_k is not None and self.top_k > 0)
            or (self.top_p is not None and self.top_p < 1.0)
            or (self.typical_p is not None and self.typical_p < 1.0)
        )


@dataclass
class Choice:
    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


class TokenChooser:
    """Per-sequence state: the generator and token counts for the penalties."""

    def __init__(self, params: SamplingParams, history: list[int]):
        self.params = params
        self.seed: int | None = None
        self.generator: torch.Generator | None = None
        if params.sampling:
            self.seed = params.seed if params.seed is not None else random.getrandbits(63)
            self.generator = torch.Generator().manual_seed(self.seed)
        self._needs_history = bool(params.repetition_penalty and params.repetition_penalty != 1.0) or bool(
            params.frequency_penalty
        )
        self._counts: dict[int, int] = {}
        if self._needs_history:
            for t in history:
                self._counts[t] = self._counts.get(t, 0) + 1

    def observe(self, token_id: int) -> None:
        if self._needs_history:
            self._counts[token_id] = self._counts.get(token_id, 0) + 1

    def choose(self, logits: torch.Tensor) -> Choice:
        """``logits``: a float32 vector over the vocabulary (not modified)."""
        p = self.params
        scores = logits
        if self._needs_history and self._counts:
            scores = scores.clone()
            ids = torch.tensor(list(self._counts), dtype=torch.long)
            if p.repetition_penalty and p.repetition_penalty != 1.0:
                picked = scores[ids]
                scores[ids] = torch.where(picked < 0, picked * p.repetition_penalty, picked / p.repetition_penalty)
            if p.frequency_penalty:
                counts = torch.tensor(list(self._counts.values()), dtype=scores.dtype)
                scores[ids] = scores[ids] - p.frequency_penalty * counts
        if p.temperature is not None and p.temperature != 1.0:
            scores = scores / p.temperature
        scores = _finite_scores(scores, logits)
        logprobs = torch.log_softmax(scores, dim=-1)

        token = int(torch.argmax(scores)) if self.generator is None else self._sample(scores)
        top: list[tuple[int, float]] = []
        if p.top_n_tokens:
            values, indices = torch.topk(logprobs, p.top_n_tokens)
            top = [(int(i), float(v)) for i, v in zip(indices, values, strict=True)]
        return Choice(token_id=token, logprob=float(logprobs[token]), top=top)

    def _sample(self, scores: torch.Tensor) -> int:
        p = self.params
        filtered = scores.clone()
        if p.top_k:
            k = min(p.top_k, filtered.shape[-1])
            kth = torch.topk(filtered, k).values[-1]
            filtered[filtered < kth] = float("-inf")
        if p.top_p is not None and p.top_p < 1.0:
            sorted_scores, order = torch.sort(filtered, descending=True)
            cumulative = torch.softmax(sorted_scores, dim=-1).cumsum(dim=-1)
            drop = cumulative > p.top_p
            drop[1:] = drop[:-1].clone()  # keep the token that crosses the threshold
            drop[0] = False
            filtered[order[drop]] = float("-inf")
        if p.typical_p is not None and p.typical_p < 1.0:
            logp = torch.log_softmax(filtered, dim=-1)
            probs = logp.exp()
            entropy = -(torch.nan_to_num(probs * logp)).sum()
            deviation = (entropy + logp).abs()
            order = torch.argsort(deviation)
            cumulative = probs[order].cumsum(dim=-1)
            cutoff = int((cumulative < p.typical_p).sum()) + 1
            filtered[order[cutoff:]] = float("-inf")
        probs = torch.softmax(filtered, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))


def _finite_scores(scores: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """Keep extreme parameters (a temperature of 1e-300, a huge penalty) from turning the
    distribution into NaN: overflow saturates to a large finite score, and if nothing finite
    is left the raw logits are used. Found by the schemathesis conformance test (a 424)."""
    big = torch.finfo(scores.dtype).max / 4
    scores = torch.nan_to_num(scores, nan=float("-inf"), posinf=big, neginf=float("-inf"))
    if not torch.isfinite(scores).any():
        return fallback
    return scores
