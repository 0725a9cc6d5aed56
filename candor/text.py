"""Text a client may hand Candor to store: one rule for every field, on every backend.

PostgreSQL's text columns cannot hold NUL (U+0000), SQLite's can, and neither (nor
UTF-8) can hold a lone surrogate. Client text that carries either is refused at the
door with a message naming the field (a 422 from the API, exit 2 from the CLI), so
the two backends never disagree and a database never sees it. Text Candor itself
produced or retrieved (model output, chunks of ingested documents) has NUL removed
instead (``without_nul``): refusing it would fail a request the client could not fix.

Ground level: imports only pydantic.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BeforeValidator

from candor.errors import InvalidInputError

NUL = "\x00"


def check_storable(value: str) -> str:
    """``value`` unchanged, or ValueError saying why it cannot be stored (NUL, lone surrogate)."""
    if NUL in value:
        raise ValueError("text must not contain NUL characters (U+0000)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (no lone surrogates)") from None
    return value


def without_nul(value: object) -> object:
    """A string with every NUL removed (anything else unchanged): for text Candor produced itself."""
    return value.replace(NUL, "") if isinstance(value, str) and NUL in value else value


def storable_or_invalid(value: str, what: str) -> str:
    """``check_storable`` for store and CLI callers: InvalidInputError naming ``what``."""
    try:
        return check_storable(value)
    except ValueError as exc:
        raise InvalidInputError(f"{what}: {exc}") from None


StoredText = Annotated[str, AfterValidator(check_storable)]
"""A client's string that may reach the answer log or the index: no NUL, valid Unicode."""

NulFreeText = Annotated[str, BeforeValidator(without_nul)]
"""A string Candor produced or retrieved: NUL removed before it is stored."""
