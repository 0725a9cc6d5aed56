"""Operations: liveness, readiness (which dependency is down), Prometheus metrics."""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from candor.service.deps import ServicesDep

router = APIRouter(tags=["operations"])

CHECK_TIMEOUT_S = 3.0


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def _check(fn: Any, is_async: bool = False) -> str:
    try:
        with anyio.fail_after(CHECK_TIMEOUT_S):
            ok = await fn() if is_async else await anyio.to_thread.run_sync(fn)
        return "ok" if ok is not False else "unavailable"
    except TimeoutError:
        return "unavailable: timed out"
    except Exception as exc:  # report, never raise: this route says what is down
        return f"unavailable: {exc}"


@router.get("/readyz", summary="Chroma, the database and the model server all answer")
async def readyz(services: ServicesDep) -> JSONResponse:
    from candor.ingest.store import check_chroma

    checks = {
        "chroma": await _check(lambda: check_chroma(services.settings)),
        "database": await _check(services.store.ping),
        "model_server": await _check(services.llm.health, is_async=True),
    }
    ready = all(v == "ok" for v in checks.values())
    body = {"status": "ready" if ready else "not ready", "checks": checks}
    return JSONResponse(body, status_code=200 if ready else 503, headers=None if ready else {"Retry-After": "5"})


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(services: ServicesDep) -> Response:
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
