"""The prompt contract: one template and one refusal sentence.

Serving, training data, evaluation and the feedback pairs builder all import
these definitions, so the model is trained on exactly the prompt it is served.
Bump PROMPT_VERSION whenever the rendered text changes: the answer log records
it, and the retraining pipeline rebuilds old prompts with the version they had.
Pure Python, no heavy imports.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher

PROMPT_VERSION = "candor-v1"

REFUSAL_SENTENCE = "I don't know based on the provided documents."

SYSTEM_PROMPT = (
    "You are Candor. Answer the question using only the numbered context passages. "
    "Answer briefly, with the words of the context. "
    f'If the passages do not contain the answer, reply exactly: "{REFUSAL_SENTENCE}"'
)

NO_CONTEXT = "(no passages)"


@dataclass(frozen=True)
class ContextChunk:
    text: str
    title: str | None = None


Message = dict[str, str]


def format_context(chunks: Sequence[ContextChunk]) -> str:
    if not chunks:
        return NO_CONTEXT
    parts = []
    for i, chunk in enumerate(chunks, start=1):
        head = f"[{i}] ({chunk.title}) " if chunk.title else f"[{i}] "
        parts.append(head + chunk.text.strip())
    return "\n\n".join(parts)


EVIDENCE_MODES = ("none", "sentence", "span")


def evidence_text(mode: str, passage: str, start: int, end: int) -> str | None:
    """What the prompt's evidence line shows for a span [start, end) of ``passage`` (None: no line).

    ``sentence``: the sentence(s) holding the span; ``span``: the span alone; ``none``: nothing. The
    same function renders served, evaluated and training prompts.
    """
    if mode not in EVIDENCE_MODES:
        raise ValueError(f"evidence mode must be one of {EVIDENCE_MODES}, not {mode!r}")
    if mode == "none" or start < 0 or end <= start or end > len(passage):
        return None
    if mode == "span":
        text = passage[start:end]
    else:
        breaks = [(m.start(), m.end()) for m in _SENTENCE_BREAK.finditer(passage)]
        left = max((b_end for _, b_end in breaks if b_end <= start), default=0)
        right = min((b_start for b_start, _ in breaks if b_start >= end), default=len(passage))
        text = passage[left:right]
    text = " ".join(text.split())
    return text or None


_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\n\s*\n")  # as service/refusal_policy.evidence_sentence


def build_user_message(question: str, chunks: Sequence[ContextChunk], evidence: str | None = None) -> str:
    """Context, then (when the reader marked one) the evidence line, then the question."""
    line = f"Evidence: {evidence.strip()}\n" if evidence and evidence.strip() else ""
    return f"Context:\n{format_context(chunks)}\n\n{line}Question: {question.strip()}"


def build_messages(
    question: str,
    chunks: Sequence[ContextChunk],
    history: Sequence[Message] = (),
    answer: str | None = None,
    evidence: str | None = None,
) -> list[Message]:
    """System anchor, earlier turns, then the context, the evidence line (``evidence_text``) and the question.

    With ``answer`` the assistant turn is appended (a training example).
    """
    messages: list[Message] = [{"role": "system", "content": SYSTEM_PROMPT}]
    for turn in history:
        messages.append({"role": turn["role"], "content": turn["content"]})
    messages.append({"role": "user", "content": build_user_message(question, chunks, evidence)})
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


class PromptTooLong(ValueError):
    """Even the question alone does not fit the model's input budget."""


@dataclass
class FittedPrompt:
    messages: list[Message]
    chunks: list[ContextChunk]  # the chunks kept, in rank order (possibly trimmed)
    n_dropped: int
    n_trimmed: int
    history_turns: int
    tokens: int


def fit_messages(
    question: str,
    chunks: Sequence[ContextChunk],
    history: Sequence[Message],
    count_tokens: Callable[[list[Message]], int],
    max_tokens: int,
    evidence: str | None = None,
) -> FittedPrompt:
    """Fit the prompt into ``max_tokens`` without ever exceeding it.

    Priority, highest first: the question, the top-ranked chunk, the most
    recent history turns, lower-ranked chunks. Chunks are dropped from the
    bottom of the ranking, then history from the oldest turn, and finally the
    last chunk is trimmed from its end.
    """
    kept = list(chunks)
    turns = list(history)

    def size(ch: Sequence[ContextChunk], hist: Sequence[Message]) -> int:
        return count_tokens(build_messages(question, ch, hist, evidence=evidence))

    tokens = size(kept, turns)
    while tokens > max_tokens and len(kept) > 1:
        kept.pop()
        tokens = size(kept, turns)
    while tokens > max_tokens and turns:
        turns = turns[2:] if len(turns) >= 2 else []
        tokens = size(kept, turns)
    n_trimmed = 0
    if tokens > max_tokens and kept:
        last = kept[-1]
        words = last.text.split()
        lo, hi = 0, len(words)  # binary search the longest prefix that fits
        while lo < hi:
            mid = (lo + hi + 1) // 2
            trial = kept[:-1] + [ContextChunk(" ".join(words[:mid]) + " ...", last.title)]
            if size(trial, turns) <= max_tokens:
                lo = mid
            else:
                hi = mid - 1
        if lo > 0:
            kept[-1] = ContextChunk(" ".join(words[:lo]) + " ...", last.title)
            n_trimmed = 1
        else:
            kept.pop()
        tokens = size(kept, turns)
    if tokens > max_tokens:
        raise PromptTooLong(
            f"the question needs {tokens} tokens with the prompt, more than the model's input limit of {max_tokens}"
        )
    return FittedPrompt(
        messages=build_messages(question, kept, turns, evidence=evidence),
        chunks=kept,
        n_dropped=len(chunks) - len(kept),
        n_trimmed=n_trimmed,
        history_turns=len(turns),
        tokens=tokens,
    )


# --- refusal detection --------------------------------------------------------

_SOURCES = r"(?:context|passages?|documents?|text|sources?)"
_SAYS = r"(?:contain|mention|say|provide|state|include|specify)"
_REFUSAL_PATTERNS = [
    r"^i (?:really )?(?:do not|don ?t|dont) know\b",
    r"^(?:sorry|unfortunately)?,? ?i (?:cannot|can ?t|am unable to|am not able to) (?:answer|find|tell|determine)",
    rf"\b{_SOURCES} (?:does not|do not|doesn ?t|don ?t) {_SAYS}",
    r"\bnot (?:mentioned|provided|contained|stated|specified|given|found) in the (?:context|passages?|documents?|text)",
    r"^(?:there is )?no (?:information|answer|mention) (?:about|on|of|in|for)\b",
    r"^(?:the )?answer (?:is|was) not (?:in|found|available|provided)",
]
_REFUSAL_RE = [re.compile(p) for p in _REFUSAL_PATTERNS]


def normalize_text(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    text = text.replace("\u2019", "'").replace("'", " ")
    text = re.sub(r"[^\w\s]", " ", text)
    return re.sub(r"\s+", " ", text).strip()


_NORMALIZED_REFUSAL = normalize_text(REFUSAL_SENTENCE)


def is_refusal(text: str) -> bool:
    """Whether an answer declines to answer, robust to small wording changes."""
    norm = normalize_text(text)
    if not norm:
        return False
    head = norm[: len(_NORMALIZED_REFUSAL) + 10]
    if SequenceMatcher(None, head[: len(_NORMALIZED_REFUSAL)], _NORMALIZED_REFUSAL).ratio() >= 0.8:
        return True
    return any(rx.search(norm[:200]) for rx in _REFUSAL_RE)


def gives_no_answer(text: str) -> bool:
    """A refusal, or nothing at all (an answer that was only a stock opening, ``candor.generation.tidy``):
    either way the user gets the refusal sentence, and evaluation counts it as refused."""
    return not normalize_text(text) or is_refusal(text)
