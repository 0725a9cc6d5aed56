"""Hot swap: make the model server serve a registry version, verify it, then record it.

The service always asks for one stable adapter id (``settings.serving_adapter_name``,
the API's ``CANDOR_LLM_ADAPTER``); versions live behind it. So a swap is:

1. stage: ``POST /adapters {name: "<name>-candidate", path}`` loads the
   version's folder under a side name, and is verified there: ``GET /adapters``
   must list it with exactly this version hash (server and registry hash the
   same way) and a one-token generation with that ``adapter_id`` must succeed
   (real TGI silently serves the base model for an unknown id, so nothing is
   taken on trust). A broken adapter fails here, before any user sees it;
2. switch: the same folder is loaded under the stable name (requests already
   running keep the old weights) and verified the same way; if that check
   fails the previous version is loaded back and the swap raises;
3. only then ``registry.mark_serving``: what the answer log and ``candor
   adapters list`` call "serving". The side name is removed.

Real TGI has no ``/adapters`` route (it loads ``LORA_ADAPTERS`` at start):
the swap then says to restart it with ``LORA_ADAPTERS=<name>=DATA_DIR/adapters/current``
(the registry keeps that symlink on the current version) and records nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from candor.errors import CandorError, ConflictError, InvalidInputError, UnavailableError
from candor.profile import get_profile
from candor.retrain.adapters import AdapterRegistry, AdapterVersion
from candor.settings import Settings

log = logging.getLogger("candor.retrain.hot_swap")


class ModelServerAdmin:
    """The few model-server routes a swap needs, with errors a person can act on."""

    def __init__(
        self, url: str, token: str | None = None, timeout_s: float = 300.0, probe_prompt: str | None = None
    ) -> None:
        self.url = url.rstrip("/")
        # one user turn in the served model's chat format (the profile's), for the one-token probe
        self.probe_prompt = probe_prompt or get_profile().render_user_turn("Hello")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout_s = timeout_s

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            r = httpx.request(method, self.url + path, headers=self.headers, timeout=self.timeout_s, **kwargs)
        except httpx.HTTPError as exc:
            raise UnavailableError(
                f"model server at {self.url} unreachable ({exc.__class__.__name__}: {exc})"
            ) from None
        if r.status_code in (404, 405) and path.startswith("/adapters"):
            raise UnavailableError(
                f"the model server at {self.url} cannot load adapters at run time (no {method} {path}; real TGI "
                "loads LORA_ADAPTERS only at start). Restart it with LORA_ADAPTERS=<name>=DATA_DIR/adapters/current."
            )
        if r.status_code == 401:
            raise InvalidInputError(
                f"the model server at {self.url} refused the admin call: set CANDOR_MODEL_SERVER_ADMIN_TOKEN"
            )
        if r.status_code >= 400:
            try:
                message = r.json().get("error") or r.text
            except ValueError:
                message = r.text
            err = InvalidInputError if r.status_code in (400, 422) else UnavailableError
            raise err(f"model server {method} {path} failed ({r.status_code}): {message}")
        return r.json() if r.content else None

    def adapters(self) -> list[dict[str, Any]]:
        body = self._call("GET", "/adapters")
        return list(body.get("adapters", [])) if isinstance(body, dict) else list(body or [])

    def load(self, name: str, path: str) -> dict[str, Any]:
        return self._call("POST", "/adapters", json={"name": name, "path": path})

    def remove(self, name: str) -> None:
        self._call("DELETE", f"/adapters/{name}")

    def probe(self, name: str) -> str:
        body = self._call(
            "POST",
            "/generate",
            json={
                "inputs": self.probe_prompt,
                "parameters": {"adapter_id": name, "max_new_tokens": 1, "do_sample": False},
            },
        )
        return (body or {}).get("generated_text", "")


def _entry(entries: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((e for e in entries if e.get("name") == name), None)


def verify_serving(admin: ModelServerAdmin, name: str, version: AdapterVersion) -> dict[str, Any]:
    """Raise ConflictError unless the server lists ``name`` at ``version`` and generates with it."""
    entry = _entry(admin.adapters(), name)
    if entry is None:
        raise ConflictError(f"the model server does not list adapter {name!r} after loading it")
    if entry.get("version") != version.version:
        raise ConflictError(
            f"the model server serves {name!r} at version {entry.get('version')!r}, not {version.version!r}"
        )
    admin.probe(name)
    return entry


def hot_swap(settings: Settings, registry: AdapterRegistry, ref: str | None = None) -> dict[str, Any]:
    """Serve version ``ref`` (default: the registry's current) under the stable name; returns the record."""
    version = registry.get(ref) if ref else registry.current()
    if version is None:
        raise InvalidInputError("no adapter is current: promote one first (`candor adapters promote VERSION`)")
    name = settings.serving_adapter_name
    if settings.llm_adapter and settings.llm_adapter != name:
        log.warning(
            "CANDOR_LLM_ADAPTER=%s but the loop swaps adapter %r: the API will not use the swapped adapter",
            settings.llm_adapter,
            name,
        )
    admin = ModelServerAdmin(
        settings.llm_url, settings.model_server_admin_token, probe_prompt=settings.profile.render_user_turn("Hello")
    )
    path = str(version.path.resolve())
    before = _entry(admin.adapters(), name)
    staging = f"{name}-candidate"[:64]
    admin.load(staging, path)
    try:
        verify_serving(admin, staging, version)
    finally:
        try:
            admin.remove(staging)
        except CandorError as exc:  # a leftover side name costs memory, not correctness
            log.warning("could not remove the staging adapter %r: %s", staging, exc)
    admin.load(name, path)
    try:
        entry = verify_serving(admin, name, version)
    except CandorError:
        if before and before.get("path"):
            log.error("verification failed: loading %s back under %r", before.get("path"), name)
            try:
                admin.load(name, before["path"])
            except CandorError as exc:  # report the first failure; this one is logged
                log.error("could not restore the previous adapter: %s", exc)
        raise
    return registry.mark_serving(
        version.version,
        name,
        settings.llm_url,
        {
            "verified": "GET /adapters lists this version; a generation with it succeeded",
            "server_path": entry.get("path"),
        },
    )
