"""Where a gold answer sits in its paragraph: character offsets for reader examples and evidence lines.

Offsets come from the data where given (``Question.answer_starts``, the official JSON's
``answer_start``) and match the text, else from locating the answer text in the paragraph (first
exact, then case-insensitive); answers found nowhere are counted as missed. Shared by the reader's
examples (``reader_data``) and the generator's evidence lines (``dataset``). Pure Python.
"""

from __future__ import annotations

from dataclasses import dataclass

from candor.finetune.squad import Question


@dataclass
class LocateStats:
    given: int = 0  # offsets from the data that match the text
    located: int = 0  # found by searching the paragraph
    missed: int = 0  # answer text not in the paragraph: question dropped


def locate_answer(q: Question, context: str, stats: LocateStats) -> tuple[str, int] | None:
    """The first answer with a usable character offset in ``context``, or None."""
    for text, start in zip(q.answers, q.answer_starts, strict=False):
        if context[start : start + len(text)] == text:
            stats.given += 1
            return text, start
    for text in q.answers:
        start = context.find(text)
        if start < 0:
            start = context.lower().find(text.lower())
        if start >= 0 and text.strip():
            stats.located += 1
            return text, start
    stats.missed += 1
    return None
