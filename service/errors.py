"""How failures become HTTP responses: JSON with a message, never a traceback.

A dependency that is down (model server, Chroma, the database) is a 503 with
Retry-After; bad input is a 422; unknown things are 404.

Clients get a sentence and the request's id (also in the ``X-Request-ID``
header), never internal endpoints: an error's operator message (the model
server's URL, the database URL with user, host and database name) goes to the
log under that request id, and the body carries the error's ``public`` sentence.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from candor.errors import CandorError, ConflictError, InvalidInputError, NotFoundError, UnavailableError

log = logging.getLogger("candor.api")

RETRY_AFTER_S = 5
REQUEST_ID_HEADER = "X-Request-ID"
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{8,64}$")  # a caller's own id is kept only if it is this tame


def status_of(exc: CandorError) -> int:
    status = getattr(exc, "http_status", None)
    if status is not None:
        return status
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, InvalidInputError):
        return 422
    if isinstance(exc, ConflictError):
        return 409
    if isinstance(exc, UnavailableError):
        return 503
    return 502  # a dependency answered, but not usefully


def public_message(exc: CandorError, status: int) -> str:
    """What the client is told: the error's public sentence; a 5xx never gets the operator message."""
    if exc.public:
        return exc.public
    if status >= 500:
        return "a service Candor depends on answered, but not usefully; try again later"
    return str(exc)


def error_payload(exc: CandorError, request_id: str | None = None) -> tuple[int, dict[str, Any]]:
    """(status, body) for a CandorError; logs the operator message when the client is told less."""
    status = status_of(exc)
    body: dict[str, Any] = {"error": public_message(exc, status), "type": type(exc).__name__}
    if request_id is not None:
        body["request_id"] = request_id
    if status >= 500:
        log.warning("request %s -> %s %s: %s", request_id or "-", status, type(exc).__name__, exc)
    elif body["error"] != str(exc):
        log.info("request %s -> %s %s: %s", request_id or "-", status, type(exc).__name__, exc)
    return status, body


def request_id_of(request: Request) -> str | None:
    return request.scope.get("state", {}).get("request_id")


class RequestId:
    """Give every HTTP request an id (the caller's tame ``X-Request-ID``, or a new one), keep it in the
    request state for error bodies and logs, and send it back in the response's ``X-Request-ID``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(REQUEST_ID_HEADER.lower().encode(), b"").decode("latin-1")
        rid = given if _CLIENT_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", rid.encode())]}
            await send(message)

        await self.app(scope, receive, send_with_id)


def _jsonable_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for e in errors:
        out.append({"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))})
    return out


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(CandorError)
    async def _candor(request: Request, exc: CandorError) -> JSONResponse:
        status, body = error_payload(exc, request_id_of(request))
        headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        body = {"error": str(exc.detail), "request_id": request_id_of(request)}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _jsonable_errors(exc.errors())
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"] if p != "body")
        message = f"{where}: {first['msg']}" if where else first["msg"]
        body = {"error": f"invalid request: {message}", "detail": errors, "request_id": request_id_of(request)}
        return JSONResponse(body, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        rid = request_id_of(request)
        log.exception("request %s: unexpected error on %s %s", rid or "-", request.method, request.url.path)
        return JSONResponse({"error": "internal error; see the server log", "request_id": rid}, status_code=500)
