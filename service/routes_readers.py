"""The answerability reader over HTTP: its registry (admin), the hot swap, and each collection's threshold.

The API process loads the reader, so serving another version means this process reloading it:
``POST /v1/readers/reload`` loads the registry's current version (``candor.retrain.readers``), checks it
reads one passage, and only then replaces the reader the answer core uses (requests already running finish
with the one they started with); the registry records what serves. Promote and rollback are the CLI's
(`candor readers`), with the same audit trail: the registry's history keeps each change with a note naming
the key, and the audit log says who did what. ``GET /v1/collections/{name}/threshold`` says what a
collection refuses at, where that came from, and the trade-off a calibration chose.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, HTTPException, Path
from pydantic import BaseModel, ConfigDict, Field

from candor.errors import CandorError
from candor.reader import load_reader
from candor.retrain.readers import ReaderRegistry, serving_reader_folder
from candor.service.deps import AdminDep, PrincipalDep, ServicesDep
from candor.service.routes_review import (
    Serve,
    VersionPath,
    _version_out,
    _who,
    change_note,
    promote_by_hand,
    require_global_admin,
    roll_back,
)
from candor.text import StoredText

log = logging.getLogger("candor.api.audit")
router = APIRouter(tags=["review"])

COLLECTION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"


class ReaderChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reload: bool = Field(True, description="Also have this API load the version (the reader's hot swap).")
    note: StoredText | None = Field(None, max_length=1000, description="Why (kept in the registry's history).")


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: StoredText | None = Field(None, max_length=1000)


def _registry(services: Any) -> ReaderRegistry:
    return ReaderRegistry.for_settings(services.settings)


def _serving(services: Any) -> dict[str, Any] | None:
    model = getattr(services.engine, "answerability", None)
    if model is None:
        return None
    return {"layer": model.layer, "version": model.version, "threshold": services.engine.verifier_threshold()}


def reload_reader(services: Any, note: str | None) -> dict[str, Any]:
    """Load the registry's current reader (else CANDOR_READER_PATH), verify, swap it in, record it."""
    settings = services.settings
    folder = serving_reader_folder(settings)
    if folder is None:
        raise HTTPException(409, "this API serves no reader (CANDOR_READER_PATH is unset): nothing to reload")
    model = load_reader(folder, settings)
    check = model.read("What is this?", ["This is a short passage that checks the reader reads."])
    if len(check) != 1 or not 0.0 <= check[0].answerable <= 1.0:
        raise HTTPException(500, f"the reader at {folder.name} failed its check: it is not served")
    services.engine.answerability = model  # one reference swap: running requests keep the one they hold
    registry = _registry(services)
    record = None
    if registry.current() is not None and registry.current().path.resolve() == folder.resolve():
        server = f"api {socket.gethostname()} pid {os.getpid()}"
        record = registry.mark_serving(registry.current().version, "reader", server, {"note": note})
    return {
        "version": record["version"] if record else None,
        "model": model.version,
        "threshold": services.engine.verifier_threshold(),
        "since": record["since"] if record else None,
    }


@router.get("/v1/readers", summary="Reader versions (current, previous, serving) and the one in use (admin)")
async def list_readers(principal: AdminDep, services: ServicesDep) -> dict[str, Any]:
    """As `candor readers list --json`, with ``answerability``: the reader this API serves now."""
    require_global_admin(principal)

    def load() -> dict[str, Any]:
        reg = _registry(services)
        cur, prev, serving = reg.current(), reg.previous(), reg.serving()
        return {
            "current": cur.version if cur else None,
            "previous": prev.version if prev else None,
            "serving": None if serving is None else {k: serving.get(k) for k in ("version", "server", "since")},
            "versions": [_version_out(v) for v in reversed(reg.list())],
            "history": reg.history()[-20:][::-1],
        }

    body = await anyio.to_thread.run_sync(load)
    body["answerability"] = _serving(services)
    return body


async def _reload(services: Any, note: str) -> dict[str, Any]:
    try:
        out = await anyio.to_thread.run_sync(reload_reader, services, note)
    except CandorError as exc:
        log.warning("reader reload failed: %s", exc)
        return {"reloaded": False, "reload_error": f"it is current but not serving: {type(exc).__name__}: {exc}"}
    return {"reloaded": True, "serving": out}


@router.post("/v1/readers/reload", summary="Load the current reader into this API, verified (admin)")
async def reload(principal: AdminDep, services: ServicesDep, body: ReloadRequest | None = None) -> dict[str, Any]:
    require_global_admin(principal)
    note = change_note(principal, body.note if body else None)
    try:
        out = await anyio.to_thread.run_sync(reload_reader, services, note)
    except CandorError as exc:
        raise HTTPException(500, f"the reader could not be loaded ({type(exc).__name__}): {exc}") from None
    log.info("%s reloaded the reader: %s (threshold %s)", _who(principal), out["model"], out["threshold"])
    return out


@router.post("/v1/readers/{version}/promote", summary="Make a reader current by hand, bypassing the gate (admin)")
async def promote_reader(
    version: VersionPath, principal: AdminDep, services: ServicesDep, body: ReaderChange | None = None
) -> dict[str, Any]:
    body = body or ReaderChange()
    return await promote_by_hand(
        _registry(services), version, principal, body.note, "reader", "reloaded", _reload_with(services, body.reload)
    )


@router.post("/v1/readers/rollback", summary="Restore the previous current reader (admin)")
async def rollback_reader(principal: AdminDep, services: ServicesDep, body: ReaderChange | None = None):
    body = body or ReaderChange()
    serve = _reload_with(services, body.reload)
    return await roll_back(_registry(services), principal, body.note, "reader", "reloaded", serve)


def _reload_with(services: Any, reload: bool) -> Serve:
    return (lambda _version, note: _reload(services, note)) if reload else None


@router.get("/v1/collections/{name}/threshold", summary="The collection's refusal threshold and where it came from")
async def collection_threshold(
    name: Annotated[str, Path(pattern=COLLECTION_PATTERN)], principal: PrincipalDep, services: ServicesDep
) -> dict[str, Any]:
    """The answerability layer's threshold for this collection: its calibration (``candor calibrate``:
    when, from how many reviewed flags, the trade-off chosen) or the setting or the model's validation."""
    principal.require_collection(name)
    out = await anyio.to_thread.run_sync(services.engine.threshold_report, name)
    if out is None:
        raise HTTPException(409, "this API has no answerability layer (no reader or verifier): no threshold")
    return {"collection": name, **out}
