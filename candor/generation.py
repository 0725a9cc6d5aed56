"""Generation hygiene: the decoding parameters every generator gets, and the repeated-sentence guard.

``GenerationParams`` is the one object the served path (``service/llm_client.py`` sends it in TGI's
words: ``repetition_penalty``, ``frequency_penalty``, ``stop``) and the in-process oracle evaluation
(``finetune/evaluate.py``) both apply, so oracle measures what is served. Its defaults come from
``candor.settings`` and were chosen by measurement (reports/generation-hygiene.md).

``RepeatGuard`` stops a loop whatever the model: when the text starts a sentence that repeats an
earlier one (normalised), the answer is cut there. It works on a stream: a sentence that might be a
repeat (its text so far is the beginning of an earlier sentence) is held back until it either
diverges (then it is relayed) or completes as a repeat (then the stream stops).

``LeadIn`` drops a stock opening ("The answer is:", "The answer to this question is:", "Answer:"): the
135M base model opens ~40% of its answers with one and fine-tuning kept the habit (probably through
the distillation term's pull toward the base's first token), which leaves the answer itself unchanged
but buries it (300 oracle dev questions, step-200 evidence adapter, rescored: EM on answerable 5.2%
with the opening, 22.6% without). Only openings that end in a colon are dropped, so "The
answer is not in the passages" stays whole. ``tidy`` applies both to a finished text; the stream
applies the same two in the same order. Pure Python.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# a sentence ends at . ! ? followed by white space, or at a line break (headings and list items); a clause
# at : or ; ("The answer to this question is: The answer to this question is: ...")
_BOUNDARY = re.compile(r"(?<=[.!?:;])[ \t]+|\s*\n\s*")
_LEADING_MARKERS = re.compile(r"^(?:\d+ )+")  # "[5] (API key) ..." and "1. ..." number the same sentence apart
MIN_WORDS = 2  # shorter sentences ("Yes.", "1.") are not compared
_MARKER = re.compile(r"\s*(?:\d{1,2}[.)]|\[\d+\])\s*")  # a list number: it opens the next sentence


def _is_marker(text: str, start: int, end: int) -> bool:
    """Markup or a list number alone ("##", "3.", "[2]"): part of the sentence after it, not one of its own.

    A number right after a clause that ends in a colon is that clause's answer ("The answer is: 12."), not a
    list number: joined to the next sentence it would hide a repeat of the clause."""
    fragment = text[start:end]
    if not re.search(r"[^\W_]", fragment):
        return True
    return bool(_MARKER.fullmatch(fragment)) and not text[:start].rstrip().endswith(":")


def sentence_key(sentence: str) -> str:
    """A sentence normalised for comparison: lower case, no punctuation or markup, no leading numbers."""
    text = unicodedata.normalize("NFKC", sentence).lower().replace("\u2019", "'")
    text = " ".join(re.sub(r"[^\w\s]|_", " ", text).split())
    return _LEADING_MARKERS.sub("", text + " ").strip()


def split_sentences(text: str) -> list[tuple[int, str]]:
    """(start offset, sentence) for each non-empty sentence of ``text``."""
    out, start = [], 0
    for m in _BOUNDARY.finditer(text):
        if _is_marker(text, start, m.start()):
            continue  # "3." or "##" opens the next sentence: a list number is not a sentence of its own
        out.append((start, text[start : m.start()]))
        start = m.end()
    if text[start:].strip():
        out.append((start, text[start:]))
    return out


def first_repeat(text: str, min_words: int = MIN_WORDS) -> int | None:
    """Offset of the first sentence that repeats an earlier one (normalised), or None."""
    seen: set[str] = set()
    for start, sentence in split_sentences(text):
        key = sentence_key(sentence)
        if len(key.split()) < min_words:
            continue
        if key in seen:
            return start
        seen.add(key)
    return None


def repeats_a_sentence(text: str, min_words: int = MIN_WORDS) -> bool:
    """True when the answer says the same sentence (normalised) twice: the check the reports count."""
    return first_repeat(text, min_words) is not None


def cut_repeats(text: str) -> str:
    """The text up to the first repeated sentence (what a stream through ``RepeatGuard`` relays)."""
    guard = RepeatGuard()
    return (guard.feed(text) + guard.finish()).rstrip()


class RepeatGuard:
    """Incremental: ``feed`` each piece and relay what it returns; ``finish`` at the end of the stream.

    Once ``stopped`` is set the caller stops the stream: nothing more will be relayed.
    """

    def __init__(self, min_words: int = MIN_WORDS) -> None:
        self.min_words = min_words
        self.text = ""
        self.stopped = False
        self._keys: list[str] = []
        self._start = 0  # where the sentence in progress starts
        self._released = 0  # characters relayed so far

    def _could_repeat(self, key: str) -> bool:
        # text with no words yet ("## ", "[2] ") is held too: it may open a repeated heading
        return not key or any(k.startswith(key) for k in self._keys)

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        self.text += piece
        for m in _BOUNDARY.finditer(self.text, self._start):
            if _is_marker(self.text, self._start, m.start()):
                continue  # as in split_sentences
            key = sentence_key(self.text[self._start : m.start()])
            if len(key.split()) >= self.min_words:
                if key in self._keys:
                    self.stopped = True
                    return self._release(self._start)
                self._keys.append(key)
            self._start = m.end()
        tail = sentence_key(self.text[self._start :])
        return self._release(self._start if self._could_repeat(tail) else len(self.text))

    def finish(self) -> str:
        """The held tail, unless it repeats (or is the unfinished start of) an earlier sentence."""
        if self.stopped:
            return ""
        tail = sentence_key(self.text[self._start :])
        if len(tail.split()) >= self.min_words and self._could_repeat(tail):
            self.stopped = True
            return ""
        return self._release(len(self.text))

    def _release(self, upto: int) -> str:
        out = self.text[self._released : upto] if upto > self._released else ""
        self._released = max(self._released, upto)
        return out

    @property
    def relayed(self) -> str:
        return self.text[: self._released]


_LEAD_INS = tuple(
    f"{head}:"
    for head in (
        "answer",
        "the answer",
        "the answer is",
        *(f"the answer to {whose} question is" for whose in ("this", "the", "your", "that")),
    )
)


# the same openings with the question restated inside them, quoted ('The answer to the question "What is X?"
# is:') or as a clause ("The answer to the question of which servers ... is:"); matched on the raw text, so
# a line break or a sentence's end in the clause means it is not an opening
_ASKED = r"\s*the[ \t]+answer[ \t]+to[ \t]+(?:this|the|your|that)[ \t]+question[ \t]+"
_QUOTES = (('"', '"'), ("\u201c", "\u201d"), ("'", "'"))
_RESTATEMENTS = (
    "|".join(rf"{a}[^{b}\n]{{1,200}}{b}" for a, b in _QUOTES) + r"|(?:of|whether|about)[ \t][^:.;!?\n]{1,200}?"
)
_RESTATED = re.compile(rf"{_ASKED}(?:{_RESTATEMENTS})[ \t]+is:", re.IGNORECASE)
_MAY_RESTATE = re.compile(
    _ASKED
    + "(?:"
    + "|".join(rf"{a}[^{b}\n]{{0,200}}(?:{b}[ \t]*(?:i|is)?)?" for a, b in _QUOTES)
    + r"|o|wh?|whe|whet|wheth|whethe|ab?|abo|abou|(?:of|whether|about)(?:[ \t][^:.;!?\n]{0,203})?)",
    re.IGNORECASE,
)


def _opening_key(text: str) -> str:
    """Case-blind, spaces collapsed, a trailing one kept: "the answer " may go on to "is:", "the answer:" ends it."""
    return " ".join(text.lower().split()) + (" " if text[-1:].isspace() and text.strip() else "")


def _opening_end(text: str) -> int | None:
    """Where the opening ``text`` starts with ends (after its colon), or None when it does not start with one."""
    key = _opening_key(text)
    if any(key.startswith(f) for f in _LEAD_INS):
        return text.index(":") + 1  # a stock opening ends at its only colon
    m = _RESTATED.match(text)
    return m.end() if m else None


def _may_open(text: str) -> bool:
    """Whether more text could still make ``text`` an opening."""
    key = _opening_key(text)
    return not key.strip() or any(f.startswith(key) for f in _LEAD_INS) or _MAY_RESTATE.fullmatch(text) is not None


class LeadIn:
    """Drops a stock opening that ends in a colon ("The answer is: 1598" relays "1598"), on a stream.

    Text is held while it may still be such an opening (compared case-blind, spaces collapsed); once it
    is one, the opening and the spaces after it are dropped; once it cannot be, everything is relayed.
    An opening that restates the question ('The answer to the question "Who?" is:') is held for at most
    its length, about 230 characters.
    """

    def __init__(self) -> None:
        self._held = ""
        self._state = "deciding"  # deciding | dropping-space | relaying

    def feed(self, piece: str) -> str:
        if self._state == "relaying":
            return piece
        self._held += piece
        if self._state == "deciding":
            end = _opening_end(self._held)
            if end is None:
                if _may_open(self._held):
                    return ""  # may still become an opening
                self._state = "relaying"
                out, self._held = self._held, ""
                return out
            self._held = self._held[end:]
            self._state = "dropping-space"
        self._held = self._held.lstrip()  # dropping the spaces after the opening
        if not self._held:
            return ""
        self._state = "relaying"
        out, self._held = self._held, ""
        return out

    def finish(self) -> str:
        """What is still held: an unfinished opening is relayed as it is (it was not one)."""
        out = self._held if self._state != "dropping-space" else ""
        self._held, self._state = "", "relaying"
        return out


def strip_lead_in(text: str) -> str:
    """``text`` without a stock opening ending in a colon (what a stream through ``LeadIn`` relays)."""
    lead = LeadIn()
    return lead.feed(text) + lead.finish()


def tidy(text: str) -> str:
    """The answer hygiene the service applies to a finished text: the repeat cut, then the opening."""
    return strip_lead_in(cut_repeats(text))


@dataclass(frozen=True)
class GenerationParams:
    """Decoding parameters in TGI's words (greedy decoding; ``None`` leaves a penalty off)."""

    max_new_tokens: int = 64
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    stop: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Any, max_new_tokens: int | None = None) -> GenerationParams:
        return cls(
            max_new_tokens=max_new_tokens or settings.max_new_tokens,
            repetition_penalty=settings.repetition_penalty,
            frequency_penalty=settings.frequency_penalty,
            stop=tuple(s for s in settings.stop_sequences if s),
        )

    def tgi(self) -> dict[str, Any]:
        """The TGI ``parameters`` these set (penalties only when on)."""
        out: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "stop": list(self.stop) or None}
        if self.repetition_penalty is not None and self.repetition_penalty != 1.0:
            out["repetition_penalty"] = self.repetition_penalty
        if self.frequency_penalty:
            out["frequency_penalty"] = self.frequency_penalty
        return out

    def cut_stop(self, text: str) -> str:
        """Text up to the first stop sequence (greedy decoding: stopping there gives the same prefix)."""
        return cut_at_stops(text, self.stop)

    def describe(self) -> str:
        parts = [f"max_new_tokens={self.max_new_tokens}"]
        if self.repetition_penalty is not None:
            parts.append(f"repetition_penalty={self.repetition_penalty}")
        if self.frequency_penalty:
            parts.append(f"frequency_penalty={self.frequency_penalty}")
        if self.stop:
            parts.append(f"stop={list(self.stop)!r}")
        return ", ".join(parts)


class StopHold:
    """Streamed text released only once it cannot be part of a stop sequence.

    TGI streams the tokens that make up a stop sequence before its final event (whose text keeps the
    sequence); OpenAI streams must never show one. A stream relays each piece through ``feed``: text that
    ends in the beginning of a stop sequence ("\nQues" of "\nQuestion:") is held until it diverges, and
    nothing from a matched sequence on is released. ``finish`` gives the rest of the final, cut text. The
    LLM client uses it on TGI streams, the model server on its OpenAI streams.
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(s for s in stops if s)
        self.text = ""
        self.sent = 0
        self.matched = False

    def feed(self, piece: str) -> str:
        if self.matched:
            return ""
        self.text += piece
        safe = len(self.text)
        for s in self.stops:
            at = self.text.find(s, max(0, self.sent - len(s) + 1))
            if at != -1:
                self.matched = True
                safe = min(safe, at)
        if not self.matched:
            safe -= self._open_prefix()
        out = self.text[self.sent : max(safe, self.sent)]
        self.sent = max(safe, self.sent)
        return out

    def _open_prefix(self) -> int:
        """The length of the longest end of the text that begins a stop sequence (0: none)."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:n]):
                    best = n
                    break
        return best

    def finish(self, final_text: str) -> str:
        """What is left to relay once the stream ends: nothing after a matched stop sequence; else the rest
        of the finished (already cut) text, or, where that differs from what streamed, the held rest of
        the stream."""
        done = self.text[: self.sent]
        if self.matched:
            out = ""
        elif final_text.startswith(done):
            out = final_text[len(done) :]
        else:
            out = self.text[self.sent :]
        self.sent, self.matched = len(self.text), True
        return out


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """The text before the first stop sequence in it (empty stops ignored)."""
    cut = len(text)
    for s in stops:
        at = text.find(s) if s else -1
        if at != -1:
            cut = min(cut, at)
    return text[:cut]


def clip(text: str, stops: Sequence[str] = ()) -> str:
    """Stop sequences, the repeat guard and the opening, as the answer core applies them to a finished text."""
    return tidy(cut_at_stops(text, stops))
