"""The adapter registry: every promoted-or-promotable LoRA adapter, by content hash.

Why by hash: a version is what the weights are, not where a run happened to
write them, so the same adapter registered twice is one version, and the
answer log's ``adapter_version`` names exactly the weights that answered. The
key is ``adapter_version`` (sha256 of adapter_config.json + the safetensors
weights, 16 hex digits: ``candor.adapter_version``, the model server's too); the full sha256
of adapter_model.safetensors is kept beside it.

Layout under ``DATA_DIR/adapters`` (``settings.adapter_registry_dir``)::

    registry.json            current, the stack of previous versions, history, serving
    versions/<hash16>/       adapter_config.json, adapter_model.safetensors, README.md (model card
                             with lineage: the flag ids it was trained on), candor_adapter.json
    current -> versions/<hash16>   a stable path for a model server (re)started later
                             (TGI: LORA_ADAPTERS=candor=DATA_DIR/adapters/current)

"current" is the version promoted for serving; "serving" is what a model
server was last verified to serve (set by the hot swap, ``hot_swap.py``).
Promote pushes the old current onto a stack; rollback pops it. Every change
holds an exclusive file lock and rewrites registry.json atomically, so two
processes (a retrain and an admin's rollback) cannot interleave.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from candor.adapter_version import adapter_version, files_sha256
from candor.errors import ConflictError, InvalidInputError, NotFoundError
from candor.settings import Settings

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
META = "candor_adapter.json"
CARD = "README.md"
LINEAGE_HEADING = "## Candor lineage"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _who() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "unknown"


def adapter_sha256(adapter_dir: Path) -> str:
    """sha256 of the adapter's weights file."""
    return files_sha256(adapter_dir, (WEIGHTS,))


@dataclass
class AdapterVersion:
    version: str
    sha256: str
    path: Path
    created_at: str
    source: str  # loop | import | default
    parent: str | None = None
    flag_ids: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "sha256": self.sha256,
            "path": str(self.path),
            "created_at": self.created_at,
            "source": self.source,
            "parent": self.parent,
            "flag_ids": self.flag_ids,
            "info": self.info,
        }


def _lineage_card(existing: str, v: AdapterVersion, title: str = "# Candor LoRA adapter") -> str:
    """The model card with a lineage section (replacing an older one): who and what trained this."""
    body = existing.split(LINEAGE_HEADING)[0].rstrip()
    ids = v.flag_ids
    lines = [
        LINEAGE_HEADING,
        "",
        f"- version: `{v.version}` (sha256 of {WEIGHTS}: `{v.sha256}`)",
        f"- registered: {v.created_at}, source: {v.source}",
        f"- trained from: `{v.parent}`" if v.parent else "- trained from: (a fresh LoRA, or outside the loop)",
        f"- feedback flags trained on: {len(ids)}",
    ]
    for key in ("train", "decision", "data"):
        if key in v.info:
            lines.append(f"- {key}: `{json.dumps(v.info[key], sort_keys=True)}`")
    if ids:
        lines += ["", "Flag ids (answer log, `candor feedback show` via the answer id in the export):", ""]
        lines += [f"- `{i}`" for i in ids]
    head = (body + "\n\n") if body else f"{title}\n\n"
    return head + "\n".join(lines) + "\n"


class AdapterRegistry:
    """The registry of LoRA adapters; ``candor.retrain.readers.ReaderRegistry`` is the same registry for the
    answerability reader, with its own folder check (``identify``), files and card."""

    META = META
    CARD_TITLE = "# Candor LoRA adapter"
    # for the loop's promotion (``candor.retrain.gate.promote_if_passed``): what a version is called in its
    # reasons, the command that manages the registry, the history's note
    LABEL, COMMAND, GATE_NOTE = "version", "adapters", "retraining loop: gate passed"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def identify(self, folder: Path) -> tuple[str, str]:
        """(version, sha256 of the weights) of a model folder; a clear error for a folder that is not one."""
        return adapter_version(folder), adapter_sha256(folder)

    def files(self, folder: Path) -> list[Path]:
        """The files a version holds: the adapter files and card; never checkpoints."""
        return [f for f in sorted(folder.iterdir()) if f.is_file()]

    @classmethod
    def for_settings(cls, settings: Settings) -> AdapterRegistry:
        root = getattr(settings, "adapter_registry_dir", None) or settings.data_dir / "adapters"
        return cls(Path(root))

    # --- state ------------------------------------------------------------------
    @property
    def _state_path(self) -> Path:
        return self.root / "registry.json"

    @property
    def versions_dir(self) -> Path:
        return self.root / "versions"

    @property
    def current_link(self) -> Path:
        return self.root / "current"

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _load(self) -> dict[str, Any]:
        if not self._state_path.exists():
            return {"versions": {}, "current": None, "stack": [], "history": [], "serving": None}
        try:
            return json.loads(self._state_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"{self._state_path} is damaged ({exc.msg}); restore it from a backup") from None

    def _save(self, state: dict[str, Any]) -> None:
        tmp = self._state_path.with_name(".registry.json.tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, self._state_path)

    def _version(self, state: dict[str, Any], version: str) -> AdapterVersion:
        d = state["versions"][version]
        return AdapterVersion(
            version=version,
            sha256=d["sha256"],
            path=self.versions_dir / version,
            created_at=d["created_at"],
            source=d["source"],
            parent=d.get("parent"),
            flag_ids=list(d.get("flag_ids") or []),
            info=dict(d.get("info") or {}),
        )

    def _resolve(self, state: dict[str, Any], ref: str) -> str:
        ref = ref.strip()
        if ref in state["versions"]:
            return ref
        hits = [v for v in state["versions"] if v.startswith(ref) or state["versions"][v]["sha256"].startswith(ref)]
        if len(hits) == 1:
            return hits[0]
        if not hits:
            raise NotFoundError(f"no adapter version {ref!r} in {self.root} (see `candor adapters list`)")
        raise InvalidInputError(f"{ref!r} matches several versions: {', '.join(sorted(hits))}")

    def _link_current(self, version: str | None) -> None:
        tmp = self.root / ".current.tmp"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        if version is None:
            if self.current_link.is_symlink():
                self.current_link.unlink()
            return
        os.symlink(Path("versions") / version, tmp)
        os.replace(tmp, self.current_link)

    def _event(self, state: dict[str, Any], action: str, version: str | None, **extra: Any) -> None:
        state["history"].append({"at": _now(), "action": action, "version": version, "by": _who(), **extra})

    # --- reading ------------------------------------------------------------------
    def list(self) -> list[AdapterVersion]:
        state = self._load()
        return sorted((self._version(state, v) for v in state["versions"]), key=lambda a: a.created_at)

    def get(self, ref: str) -> AdapterVersion:
        state = self._load()
        return self._version(state, self._resolve(state, ref))

    def current(self) -> AdapterVersion | None:
        state = self._load()
        return self._version(state, state["current"]) if state["current"] else None

    def previous(self) -> AdapterVersion | None:
        state = self._load()
        return self._version(state, state["stack"][-1]) if state["stack"] else None

    def serving(self) -> dict[str, Any] | None:
        return self._load().get("serving")

    def history(self) -> list[dict[str, Any]]:
        return list(self._load()["history"])

    # --- changing -----------------------------------------------------------------
    def ensure_default(self, path: Path | str | None, weights: str, env: str, what: str) -> AdapterVersion | None:
        """The current version; while there is none, the configured one (``env``) becomes version one."""
        cur = self.current()
        if cur is not None or not path:
            return cur
        path = Path(path)
        if not (path / weights).exists():
            raise NotFoundError(f"{env}={path} holds no {weights}")
        v = self.register(path, source="default")
        return self.promote(v.version, note=f"the configured {what} ({env})")

    def register(
        self,
        adapter_dir: Path,
        source: str = "import",
        parent: str | None = None,
        flag_ids: list[str] | None = None,
        info: dict[str, Any] | None = None,
    ) -> AdapterVersion:
        """Copy an adapter into the registry under its hash and write its lineage into the model card.

        Registering the same weights again returns the existing version unchanged.
        """
        adapter_dir = Path(adapter_dir)
        version, sha = self.identify(adapter_dir)
        with self._locked():
            state = self._load()
            if version in state["versions"]:
                return self._version(state, version)
            self.versions_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.versions_dir / f".tmp-{version}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            for f in self.files(adapter_dir):
                shutil.copy2(f, tmp / f.name)
            if self.identify(tmp)[0] != version:
                shutil.rmtree(tmp, ignore_errors=True)
                raise ConflictError(f"{adapter_dir} changed while it was being registered; try again")
            entry = AdapterVersion(
                version=version,
                sha256=sha,
                path=self.versions_dir / version,
                created_at=_now(),
                source=source,
                parent=parent,
                flag_ids=sorted(flag_ids or []),
                info=info or {},
            )
            card = tmp / CARD
            card.write_text(
                _lineage_card(card.read_text(encoding="utf-8") if card.exists() else "", entry, self.CARD_TITLE)
            )
            (tmp / self.META).write_text(json.dumps(entry.to_dict() | {"path": None}, indent=2) + "\n")
            final = self.versions_dir / version
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            state["versions"][version] = {
                "sha256": sha,
                "created_at": entry.created_at,
                "source": source,
                "parent": parent,
                "flag_ids": entry.flag_ids,
                "info": entry.info,
            }
            self._event(state, "register", version, source=source, origin=str(adapter_dir.resolve()))
            self._save(state)
            return entry

    def promote(self, ref: str, note: str | None = None, expect_current: str | None = "*") -> AdapterVersion:
        """Make ``ref`` the current version; the old one goes onto the rollback stack.

        ``expect_current`` (a version, None for "no adapter", or "*" for any)
        guards against promoting over a change made since the caller looked.
        """
        with self._locked():
            state = self._load()
            version = self._resolve(state, ref)
            old = state["current"]
            if old == version:
                return self._version(state, version)
            if expect_current != "*" and old != expect_current:
                raise ConflictError(
                    f"the current adapter changed meanwhile ({expect_current or 'none'} -> {old or 'none'}); "
                    "not promoting over it"
                )
            if old:
                state["stack"].append(old)
            state["current"] = version
            self._link_current(version)
            self._event(state, "promote", version, previous=old, note=note)
            self._save(state)
            return self._version(state, version)

    def rollback(self, note: str | None = None) -> tuple[AdapterVersion, AdapterVersion | None]:
        """Restore the previous current version; returns (restored, replaced)."""
        with self._locked():
            state = self._load()
            if not state["stack"]:
                raise ConflictError("nothing to roll back to: no earlier adapter was promoted")
            old = state["current"]
            version = state["stack"].pop()
            state["current"] = version
            self._link_current(version)
            self._event(state, "rollback", version, replaced=old, note=note)
            self._save(state)
            return self._version(state, version), (self._version(state, old) if old else None)

    def mark_serving(self, ref: str, name: str, server: str, details: dict[str, Any] | None = None) -> dict:
        """Record that ``server`` was verified to serve version ``ref`` under adapter id ``name``."""
        with self._locked():
            state = self._load()
            version = self._resolve(state, ref)
            record = {
                "name": name,
                "version": version,
                "sha256": state["versions"][version]["sha256"],
                "path": str((self.versions_dir / version).resolve()),
                "server": server,
                "since": _now(),
                **(details or {}),
            }
            state["serving"] = record
            self._event(state, "serve", version, name=name, server=server)
            self._save(state)
            return record


def read_serving(settings: Settings) -> dict[str, Any] | None:
    """The adapter a model server was last verified to serve ({name, version, sha256, path, ...}).

    Cheap (one small JSON read, no lock): the service can log the serving
    adapter's name and version hash with every answer from this.
    """
    path = AdapterRegistry.for_settings(settings).root / "registry.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("serving")
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def ensure_current(settings: Settings, registry: AdapterRegistry | None = None) -> AdapterVersion | None:
    """The current version; on first use, the configured default adapter becomes version one.

    Without this, the first retraining run would start from a fresh LoRA and
    compare itself with the base model instead of with what users are served.
    """
    registry = registry or AdapterRegistry.for_settings(settings)
    return registry.ensure_default(settings.adapter_path, WEIGHTS, "CANDOR_ADAPTER_PATH", "default adapter")
