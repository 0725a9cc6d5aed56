"""Review over HTTP (admin keys): pending flags, approve or reject them; the retraining runs and the gate's
decisions; adapter versions, promote and rollback. The same store and registry calls as `candor feedback
review` and `candor adapters`, with the same audit trail: a review keeps who (the key), when and the note;
the registry's history keeps every promotion and rollback with a note naming the key.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, HTTPException, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from candor.errors import CandorError, NotFoundError
from candor.retrain.adapters import AdapterRegistry
from candor.retrain.hot_swap import hot_swap
from candor.retrain.runs import read_runs
from candor.service.auth import Principal
from candor.service.deps import AdminDep, ServicesDep
from candor.text import StoredText

log = logging.getLogger("candor.api.audit")
router = APIRouter(tags=["review"])

FLAG_ID_PATTERN = r"^[0-9A-HJKMNP-TV-Z]{26}$"  # a ULID
VERSION_PATTERN = r"^[0-9a-f]{4,64}$"  # a version or a unique prefix of it
VersionPath = Annotated[str, Path(pattern=VERSION_PATTERN)]  # a version hash (or a unique prefix) in a route


class ReviewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    flag_ids: list[Annotated[str, Field(pattern=FLAG_ID_PATTERN)]] = Field(min_length=1, max_length=100)
    decision: Literal["approved", "rejected"] = Field(description="approved: may reach training; rejected: never.")
    note: StoredText | None = Field(None, max_length=1000, description="Why (kept with the review).")
    reviewer: StoredText | None = Field(
        None, max_length=100, description="Who reviews (kept with the review, beside the key's id)."
    )


class AdapterChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    swap: bool = Field(True, description="Also hot-swap the version into the model server (as the CLI does).")
    note: StoredText | None = Field(None, max_length=1000, description="Why (kept in the registry's history).")


def _who(principal: Principal) -> str:
    return f"key {principal.key_id}" if principal.key_id else "local operator (auth disabled)"


def require_global_admin(principal: Principal) -> None:
    """Adapters and retraining runs serve every collection: an admin key limited to some cannot change them."""
    principal.require_admin()
    if principal.collections is not None:
        raise HTTPException(
            403, "adapters and retraining runs serve every collection: this needs an admin key for every collection"
        )


def _review_item(flag: Any, answer: Any) -> dict[str, Any]:
    passages = [
        {
            "rank": c.rank,
            "chunk_id": c.chunk_id,
            "doc_id": c.doc_id,
            "source": c.source,
            "title": c.title,
            "score": c.score,
            "in_prompt": c.prompt_text is not None,
            "text": c.prompt_text if c.prompt_text is not None else c.text,
        }
        for c in answer.chunks
    ]
    return {
        **flag.to_dict(),
        "answer": {
            "id": answer.id,
            "created_at": answer.created_at.isoformat(),
            "collection": answer.collection,
            "question": answer.question,
            "history": [m.model_dump() if hasattr(m, "model_dump") else m for m in answer.history],
            "answer": answer.answer,
            "refused": answer.refused,
            "refusal_layer": None if answer.refusal_layer is None else str(answer.refusal_layer),
            "adapter_version": answer.adapter_version,
            "passages": passages,
        },
    }


@router.get("/v1/feedback/pending", summary="Flags waiting for review, oldest first, with their answers (admin)")
async def pending_flags(
    principal: AdminDep,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(pattern=FLAG_ID_PATTERN)] = None,
) -> dict[str, Any]:
    """As `candor feedback review` lists them. A key limited to some collections sees their flags only (a
    page may then hold fewer than ``limit``; follow ``next_cursor``)."""

    def load() -> dict[str, Any]:
        page = services.store.list_flags(review_status="pending", limit=limit, cursor=cursor)
        items = []
        for flag in page.items:
            answer = services.store.get_answer(flag.answer_id)
            if principal.can_use(answer.collection):
                items.append(_review_item(flag, answer))
        return {"items": items, "next_cursor": page.next_cursor}

    return await anyio.to_thread.run_sync(load)


@router.post("/v1/feedback/review", summary="Approve or reject flags (admin), as `candor feedback review`")
async def review_flags(body: ReviewRequest, principal: AdminDep, services: ServicesDep) -> dict[str, Any]:
    reviewer = f"{body.reviewer} ({_who(principal)})" if body.reviewer else _who(principal)

    def review() -> list[Any]:
        for flag_id in dict.fromkeys(body.flag_ids):
            try:
                answer = services.store.get_answer(services.store.get_flag(flag_id).answer_id)
            except NotFoundError:
                raise HTTPException(404, f"flag {flag_id!r} not found") from None
            if not principal.can_use(answer.collection):
                raise HTTPException(404, f"flag {flag_id!r} not found")
        return services.store.review_flags(body.flag_ids, body.decision, reviewer=reviewer, note=body.note)

    flags = await anyio.to_thread.run_sync(review)
    log.info("%s %s flag(s) %s", reviewer, body.decision, ", ".join(f.id for f in flags))
    return {"items": [f.to_dict() for f in flags]}


@router.get("/v1/retrain/runs", summary="The last retraining runs with the gate's decision and reasons (admin)")
async def retrain_runs(
    principal: AdminDep, services: ServicesDep, limit: Annotated[int, Query(ge=1, le=200)] = 20
) -> dict[str, Any]:
    require_global_admin(principal)
    return {"runs": await anyio.to_thread.run_sync(read_runs, services.settings, limit)}


def _registry(services: Any) -> Any:
    return AdapterRegistry.for_settings(services.settings)


def _version_out(v: Any) -> dict[str, Any]:
    d = v.to_dict()
    d.pop("path", None)  # a folder on the server: not for clients
    return d


def _answerability(services: Any) -> dict[str, Any] | None:
    model = getattr(services.engine, "answerability", None)
    if model is None:
        return None
    return {"layer": model.layer, "version": model.version, "threshold": services.engine.verifier_threshold()}


@router.get("/v1/adapters", summary="Adapter versions (current, previous, serving) and the reader in use (admin)")
async def list_adapters(principal: AdminDep, services: ServicesDep) -> dict[str, Any]:
    """As `candor adapters list --json`; ``answerability`` is the reader (or verifier) this API serves with
    (its version; it changes with CANDOR_READER_PATH and a restart, not through the registry)."""
    require_global_admin(principal)

    def load() -> dict[str, Any]:
        reg = _registry(services)
        cur, prev, serving = reg.current(), reg.previous(), reg.serving()
        serving = None if serving is None else {k: serving.get(k) for k in ("name", "version", "since")}
        return {
            "current": cur.version if cur else None,
            "previous": prev.version if prev else None,
            "serving": serving,
            "versions": [_version_out(v) for v in reversed(reg.list())],  # newest first
            "history": reg.history()[-20:][::-1],
        }

    body = await anyio.to_thread.run_sync(load)
    body["answerability"] = _answerability(services)
    return body


async def _swap(services: Any, registry: Any, version: str) -> dict[str, Any]:
    try:
        record = await anyio.to_thread.run_sync(hot_swap, services.settings, registry, version)
    except CandorError as exc:
        log.warning("hot swap of %s failed: %s", version, exc)
        return {
            "swapped": False,
            "swap_error": f"it is current but not serving: the hot swap failed ({type(exc).__name__}; the API's log "
            "says why); retry with `candor adapters swap`",
        }
    return {"swapped": True, "serving": {k: record.get(k) for k in ("name", "version", "since")}}


def _swap_with(services: Any, registry: Any, swap: bool) -> Serve:
    return (lambda version, _note: _swap(services, registry, version)) if swap else None


def change_note(principal: Principal, note: str | None) -> str:
    """The registry history's note for a change made over HTTP: which key, and why."""
    return f"API, {_who(principal)}" + (f": {note}" if note else "")


# After a change by hand, serve what is now current: (version, note) -> the fields to add to the response
Serve = Callable[[str, str], Awaitable[dict[str, Any]]] | None


async def promote_by_hand(
    reg: Any, version: str, principal: Principal, why: str | None, what: str, served: str, serve: Serve
) -> dict[str, Any]:
    """Make ``version`` current in ``reg`` (the adapter's or the reader's registry), bypassing the gate (an admin's
    choice; a 404 for an unknown version), then ``serve`` it; ``served`` names the response field that says so."""
    require_global_admin(principal)
    note = change_note(principal, why)
    try:
        v = await anyio.to_thread.run_sync(lambda: reg.promote(version, note=note))
    except NotFoundError:
        raise HTTPException(404, f"no {what} version {version!r} (see GET /v1/{what}s)") from None
    log.info("%s promoted %s %s", _who(principal), what, v.version)
    out: dict[str, Any] = {"current": v.version, served: False}
    return out | (await serve(v.version, note) if serve is not None else {})


async def roll_back(reg: Any, principal: Principal, why: str | None, what: str, served: str, serve: Serve) -> Any:
    """Restore ``reg``'s previous current version, then ``serve`` it (as ``promote_by_hand``)."""
    require_global_admin(principal)
    note = change_note(principal, why)
    restored, replaced = await anyio.to_thread.run_sync(lambda: reg.rollback(note=note))
    was = replaced.version if replaced else None
    log.info("%s rolled %s %s back to %s", _who(principal), what, was, restored.version)
    out: dict[str, Any] = {"current": restored.version, "replaced": was, served: False}
    return out | (await serve(restored.version, note) if serve is not None else {})


@router.post("/v1/adapters/{version}/promote", summary="Make a version current by hand, bypassing the gate (admin)")
async def promote_adapter(
    version: VersionPath, principal: AdminDep, services: ServicesDep, body: AdapterChange | None = None
) -> dict[str, Any]:
    body = body or AdapterChange()
    reg = _registry(services)
    return await promote_by_hand(
        reg, version, principal, body.note, "adapter", "swapped", _swap_with(services, reg, body.swap)
    )


@router.post("/v1/adapters/rollback", summary="Restore the previous current version (admin)")
async def rollback_adapter(principal: AdminDep, services: ServicesDep, body: AdapterChange | None = None):
    body = body or AdapterChange()
    reg = _registry(services)
    return await roll_back(reg, principal, body.note, "adapter", "swapped", _swap_with(services, reg, body.swap))
