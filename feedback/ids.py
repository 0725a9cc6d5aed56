"""Sortable string ids for answers, flags and keys.

ULID layout (48-bit millisecond timestamp + 80 random bits, Crockford base32,
26 characters): ids sort in creation order, so "newest first" pagination can
use the id alone as a stable cursor, and ids from several worker processes
never collide.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from typing import Any

from candor.errors import InvalidInputError

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ID_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")


def new_id(at: datetime | None = None) -> str:
    """A ULID for the instant ``at`` (default: now, UTC)."""
    at = at or datetime.now(UTC)
    ms = int(at.timestamp() * 1000)
    value = (ms << 80) | secrets.randbits(80)
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def is_id(value: str) -> bool:
    return bool(ID_RE.match(value))


def utcnow() -> datetime:
    """Now in UTC, at millisecond precision (what the ids and both databases keep)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def keyset_page(
    session: Any, stmt: Any, column: Any, cursor: str | None, limit: int, out: Any, page: Any, *, newest_first: bool
) -> Any:
    """One page of ``stmt`` (ordered by the id ``column``, newest or oldest first; ``limit + 1`` rows) after
    ``cursor``, the last id seen: ids sort by time, so pages are stable under inserts. ``next_cursor`` is None
    on the last page."""
    if cursor is not None:
        if not is_id(cursor):
            raise InvalidInputError(f"invalid cursor {cursor!r}")
        stmt = stmt.where(column < cursor if newest_first else column > cursor)
    rows = list(session.scalars(stmt))
    more = len(rows) > limit
    rows = rows[:limit]
    return page(items=[out(r) for r in rows], next_cursor=rows[-1].id if more else None)
