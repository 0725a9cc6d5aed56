"""Serving a promoted reader: the API loads the reader, so a swap is the API reloading it.

``POST /v1/readers/reload`` (admin) makes the API load the reader registry's current version, check it
reads (one passage) and only then replace the one serving; the registry records what serves and since
when. ``candor retrain``, ``candor readers promote|rollback|reload`` call it at CANDOR_API_URL with the
admin key CANDOR_API_KEY.
"""

from __future__ import annotations

from typing import Any

import httpx

from candor.errors import InvalidInputError, UnavailableError
from candor.settings import Settings


def reload_api_reader(settings: Settings, note: str | None = None, timeout_s: float = 120.0) -> dict[str, Any]:
    """Ask the API to (re)load the current reader; returns what it serves now. Unreachable: UnavailableError."""
    url = settings.api_url.rstrip("/") + "/v1/readers/reload"
    headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
    try:
        resp = httpx.post(url, json={"note": note}, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise UnavailableError(
            f"the API at {settings.api_url} could not be reached to reload the reader ({exc}); it serves the new "
            "reader after `candor readers reload` or a restart"
        ) from None
    if resp.status_code in (401, 403):
        raise InvalidInputError(f"the API refused the reload ({resp.status_code}): CANDOR_API_KEY must be an admin key")
    if resp.status_code >= 400:
        raise UnavailableError(f"the API could not reload the reader ({resp.status_code}): {resp.text[:300]}")
    return resp.json() | {"server": settings.api_url}
