"""Is a user's correction supported by the context the model was given?

Candor answers from documents, so a correction only becomes a training answer
when the retrieved passages hold it; otherwise the right behaviour for that
prompt is still a refusal. The check is deliberately simple and explainable
(an admin reading a dropped correction can see why):

1. both sides normalised with ``candor.prompts.normalize_text`` (NFKC,
   lower-case, punctuation to spaces, apostrophes split);
2. supported at once if the whole normalised correction occurs in the
   normalised context on word boundaries (the usual case: a short span);
3. otherwise its content words (stop words removed) are looked up in the
   context's words: every number-bearing word must be present (a wrong year
   or amount is the classic hallucination, and must never be "supported" by
   its neighbours), and at least ``min_recall`` of the content words must be.

A sentence-long correction ("It was founded in 1911 by the Rhine.") passes
by step 3 when the passages say so; a new fact does not. Pure Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from candor.prompts import normalize_text
from candor.stopwords import FUNCTION_WORDS

# more function words, and the words people wrap a correction in ("the answer is ...")
# fmt: off
STOPWORDS = FUNCTION_WORDS | {
    "if", "up", "down", "out", "off", "am", "having", "here", "whose", "nor", "too", "very", "must", "us", "answer",
    "correct", "correction", "actually", "fact", "true", "said", "says", "say", "according", "context", "passage",
    "document",
}
# fmt: on


def content_words(text: str) -> list[str]:
    words = normalize_text(text).split()
    kept = [w for w in words if w not in STOPWORDS]
    return kept or words


@dataclass(frozen=True)
class Support:
    supported: bool
    how: str  # substring | words | numbers_missing | too_few_words | empty
    recall: float
    missing: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"supported": self.supported, "how": self.how, "recall": round(self.recall, 3), "missing": self.missing}


def correction_support(correction: str, contexts: Sequence[str], min_recall: float = 0.8) -> Support:
    """Whether ``contexts`` (the passage texts in the prompt) hold ``correction``; see the module doc."""
    norm = normalize_text(correction)
    ctx = " ".join(normalize_text(t) for t in contexts if t)
    if not norm or not ctx:
        return Support(False, "empty", 0.0)
    if f" {norm} " in f" {ctx} ":
        return Support(True, "substring", 1.0)
    ctx_words = set(ctx.split())
    words = content_words(correction)
    missing = [w for w in words if w not in ctx_words]
    recall = 1.0 - len(missing) / len(words)
    if any(any(ch.isdigit() for ch in w) for w in missing):
        return Support(False, "numbers_missing", recall, missing)
    if recall >= min_recall:
        return Support(True, "words", recall, missing)
    return Support(False, "too_few_words", recall, missing)
