"""Operations: liveness, readiness (which dependency is down), Prometheus metrics."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from candor.errors import CandorError
from candor.ingest.store import check_chroma
from candor.service.deps import ServicesDep, get_principal

log = logging.getLogger("candor.api")
router = APIRouter(tags=["operations"])

CHECK_TIMEOUT_S = 3.0


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def _check(name: str, fn: Any, is_async: bool = False) -> str:
    """'ok', or 'unavailable' with a sentence; the details (hosts, URLs) go to the log, not to this
    unauthenticated route."""
    try:
        with anyio.fail_after(CHECK_TIMEOUT_S):
            ok = await fn() if is_async else await anyio.to_thread.run_sync(fn)
        return "ok" if ok is not False else "unavailable"
    except TimeoutError:
        log.warning("readiness: %s did not answer within %s s", name, CHECK_TIMEOUT_S)
        return "unavailable: timed out"
    except Exception as exc:  # report, never raise: this route says what is down
        log.warning("readiness: %s is unavailable: %s", name, exc)
        public = exc.public if isinstance(exc, CandorError) and exc.public else None
        return f"unavailable: {public or f'{name} did not answer'}"


@router.get("/readyz", summary="Chroma, the database and the model server all answer")
async def readyz(services: ServicesDep) -> JSONResponse:
    checks = {
        "chroma": await _check("chroma", lambda: check_chroma(services.settings)),
        "database": await _check("database", services.store.ping),
        "model_server": await _check("model server", services.llm.health, is_async=True),
    }
    ready = all(v == "ok" for v in checks.values())
    body = {"status": "ready" if ready else "not ready", "checks": checks}
    return JSONResponse(body, status_code=200 if ready else 503, headers=None if ready else {"Retry-After": "5"})


async def metrics_reader(request: Request, services: ServicesDep) -> None:
    """/metrics names every collection in its labels: with ``metrics_auth=admin`` (the default) it needs
    an admin key allowed on every collection; ``open`` serves it to anyone who reaches the port."""
    if services.settings.metrics_auth == "open":
        return
    principal = await get_principal(request, services)
    principal.require_admin()
    if principal.collections is not None:
        raise HTTPException(403, "metrics name every collection: this needs an admin key for every collection")


@router.get("/metrics", summary="Prometheus metrics (admin key unless CANDOR_METRICS_AUTH=open)")
async def metrics(services: ServicesDep, _: Annotated[None, Depends(metrics_reader)]) -> Response:
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
