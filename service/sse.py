"""Server-sent events helpers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any


def sse_event(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    body = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"{head}data: {body}\n\n".encode()


async def prepend(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """Re-attach an event pulled early (to turn early failures into plain HTTP errors)."""
    yield first
    async for item in rest:
        yield item
