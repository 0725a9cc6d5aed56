"""How failures become HTTP responses: JSON with a message, never a traceback.

A dependency that is down (model server, Chroma, the database) is a 503 with
Retry-After; bad input is a 422; unknown things are 404.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from candor.errors import CandorError, ConflictError, InvalidInputError, NotFoundError, UnavailableError

log = logging.getLogger("candor.api")

RETRY_AFTER_S = 5


def error_payload(exc: CandorError) -> tuple[int, dict[str, Any]]:
    status = getattr(exc, "http_status", None)
    if status is None:
        if isinstance(exc, NotFoundError):
            status = 404
        elif isinstance(exc, InvalidInputError):
            status = 422
        elif isinstance(exc, ConflictError):
            status = 409
        elif isinstance(exc, UnavailableError):
            status = 503
        else:
            status = 502  # a dependency answered, but not usefully
    return status, {"error": str(exc), "type": type(exc).__name__}


def _jsonable_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for e in errors:
        out.append({"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))})
    return out


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(CandorError)
    async def _candor(request: Request, exc: CandorError) -> JSONResponse:
        status, body = error_payload(exc)
        headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
        if status >= 500:
            log.warning("%s %s -> %s: %s", request.method, request.url.path, status, exc)
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _jsonable_errors(exc.errors())
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"] if p != "body")
        message = f"{where}: {first['msg']}" if where else first["msg"]
        return JSONResponse({"error": f"invalid request: {message}", "detail": errors}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": "internal error; see the server log"}, status_code=500)
