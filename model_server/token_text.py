"""Turning generated token ids into text, one token at a time.

A byte-level BPE token can hold half of a UTF-8 character, so decoding tokens
one by one yields replacement characters. The detokenizer decodes a short
window of recent tokens and emits only the text that is complete, so the
streamed pieces always concatenate to exactly the final ``generated_text``.
"""

from __future__ import annotations

from typing import Any

_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, special_ids: set[int]):
        self._tok = tokenizer
        self._special = special_ids
        self._ids: list[int] = []  # non-special generated tokens
        self._prefix = 0  # window start
        self._read = 0  # tokens already turned into text
        self.text = ""

    def add(self, token_id: int) -> tuple[str, bool]:
        """Add a token; return (its text, whether it is a special token).

        Special tokens (end of turn, ...) get their literal form for the
        token event but never enter ``text``, as TGI does.
        """
        if token_id in self._special:
            return self._tok.convert_ids_to_tokens(token_id) or "", True
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) > len(before) and not after.endswith(_REPLACEMENT):
            piece = after[len(before) :]
            self._prefix = self._read
            self._read = len(self._ids)
            self.text += piece
            return piece, False
        return "", False

    def flush(self) -> str:
        """Text still held back at the end (an incomplete character), as decoded."""
        rest = self._decode(self._ids[self._prefix :])[len(self._decode(self._ids[self._prefix : self._read])) :]
        self._read = len(self._ids)
        self._prefix = self._read
        self.text += rest
        return rest

    def _decode(self, ids: list[int]) -> str:
        if not ids:
            return ""
        return self._tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def find_stop(text: str, new_piece: str, stops: list[str]) -> str | None:
    """The stop sequence that the latest piece completed, if any.

    Only the tail that the new piece could have completed is searched, so the
    cost does not grow with the length of the text.
    """
    for stop in stops:
        window = text[-(len(stop) + len(new_piece)) :] if new_piece else ""
        if stop and stop in window:
            return stop
    return None
