"""The chat page at ``/``: static HTML, CSS and JavaScript shipped in the package (``service/web/``).

The page is a client of the same REST API as everyone else: it keeps the API key in the tab's
sessionStorage and sends it as a bearer header, so no cookie exists for a cross-site request to ride
on. Every response carries a strict Content-Security-Policy: scripts, styles and connections from this
origin only, no inline script or style, no frames, no form posts elsewhere.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

WEB_DIR = Path(__file__).parent / "web"
FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


def _file(name: str) -> Response:
    try:
        body = (WEB_DIR / name).read_bytes()
    except FileNotFoundError:
        raise HTTPException(404, f"{name} is missing from this installation") from None
    return Response(body, media_type=FILES[name], headers=HEADERS)


@router.get("/")
async def page() -> Response:
    return _file("index.html")


@router.get("/ui/{name}")
async def asset(name: str) -> Response:
    if name not in FILES or name == "index.html":
        raise HTTPException(404, "not found")
    return _file(name)
