"""The reader registry: every answerability reader the loop (or an admin) registered, by content hash.

The adapter registry's rules, for the reader (``AdapterRegistry``: one lock, registry.json rewritten
atomically, promote pushes the old current onto a rollback stack, rollback pops it, a history of every
change with who made it). Layout under ``DATA_DIR/readers`` (``settings.reader_registry_dir``)::

    registry.json            current, the stack, history, serving (the API that reloaded it)
    versions/<hash16>/       reader.json, reader.safetensors, README.md (card with lineage: flag ids)
    current -> versions/<hash16>

The version is the first 16 hex digits of the weights' sha256. The API loads the reader, so "serving"
is recorded by the API when it (re)loads the current version (``POST /v1/readers/reload``, or at start):
a promotion by ``candor retrain`` is served after that reload. While the registry has no version, the
configured ``CANDOR_READER_PATH`` becomes version one on first use, as ``CANDOR_ADAPTER_PATH`` does.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from candor.errors import ConflictError, NotFoundError
from candor.reader import CONFIG_FILE, WEIGHTS_FILE, ReaderMeta
from candor.retrain.adapters import AdapterRegistry, AdapterVersion, _lineage_card, _now
from candor.settings import Settings

CARD = "README.md"
META = "candor_reader.json"


def reader_sha256(folder: Path) -> str:
    ReaderMeta.read(Path(folder))  # a clear error for a folder that is not a reader
    digest = hashlib.sha256()
    with (Path(folder) / WEIGHTS_FILE).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ReaderRegistry(AdapterRegistry):
    @classmethod
    def for_settings(cls, settings: Settings) -> ReaderRegistry:  # type: ignore[override]
        return cls(Path(settings.reader_registry_dir or settings.data_dir / "readers"))

    def register(
        self,
        adapter_dir: Path,
        source: str = "import",
        parent: str | None = None,
        flag_ids: list[str] | None = None,
        info: dict[str, Any] | None = None,
    ) -> AdapterVersion:
        """Copy a reader folder (reader.json, reader.safetensors, its card) in under its hash, with lineage."""
        folder = Path(adapter_dir)
        sha = reader_sha256(folder)
        version = sha[:16]
        with self._locked():
            state = self._load()
            if version in state["versions"]:
                return self._version(state, version)
            self.versions_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.versions_dir / f".tmp-{version}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            for name in (CONFIG_FILE, WEIGHTS_FILE, CARD):
                if (folder / name).is_file():
                    shutil.copy2(folder / name, tmp / name)
            if reader_sha256(tmp) != sha:
                shutil.rmtree(tmp, ignore_errors=True)
                raise ConflictError(f"{folder} changed while it was being registered; try again")
            entry = AdapterVersion(
                version, sha, self.versions_dir / version, _now(), source, parent, sorted(flag_ids or []), info or {}
            )
            card = tmp / CARD
            text = _lineage_card(card.read_text(encoding="utf-8") if card.exists() else "", entry)
            card.write_text(text.replace("# Candor LoRA adapter", "# Candor answerability reader", 1))
            (tmp / META).write_text(json.dumps(entry.to_dict() | {"path": None}, indent=2) + "\n")
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
            self._event(state, "register", version, source=source, origin=str(folder.resolve()))
            self._save(state)
            return entry


def ensure_current_reader(settings: Settings, registry: ReaderRegistry | None = None) -> AdapterVersion | None:
    """The current reader; on first use, the configured ``CANDOR_READER_PATH`` becomes version one."""
    registry = registry or ReaderRegistry.for_settings(settings)
    cur = registry.current()
    if cur is not None or settings.reader_path is None:
        return cur
    path = Path(settings.reader_path)
    if not (path / WEIGHTS_FILE).exists():
        raise NotFoundError(f"CANDOR_READER_PATH={path} holds no {WEIGHTS_FILE}")
    v = registry.register(path, source="default")
    return registry.promote(v.version, note="the configured reader (CANDOR_READER_PATH)")


def serving_reader_folder(settings: Settings) -> Path | None:
    """The reader the API should load: the registry's current version when there is one, else
    ``CANDOR_READER_PATH``; None without a reader. Only with the reader layer configured."""
    if settings.reader_path is None:
        return None
    cur = ReaderRegistry.for_settings(settings).current()
    return cur.path if cur is not None else Path(settings.reader_path)
