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
from pathlib import Path

from candor.reader import CONFIG_FILE, WEIGHTS_FILE, ReaderMeta
from candor.retrain.adapters import AdapterRegistry, AdapterVersion
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
    """The adapter registry for readers: a version is the first 16 hex digits of the weights' sha256."""

    @classmethod
    def for_settings(cls, settings: Settings) -> ReaderRegistry:  # type: ignore[override]
        return cls(Path(settings.reader_registry_dir or settings.data_dir / "readers"))

    META = META
    CARD_TITLE = "# Candor answerability reader"
    LABEL, COMMAND, GATE_NOTE = "reader", "readers", "retraining loop: reader gate passed"

    def identify(self, folder: Path) -> tuple[str, str]:
        sha = reader_sha256(folder)
        return sha[:16], sha

    def files(self, folder: Path) -> list[Path]:
        """reader.json, reader.safetensors and its card."""
        return [folder / name for name in (CONFIG_FILE, WEIGHTS_FILE, CARD) if (folder / name).is_file()]


def ensure_current_reader(settings: Settings, registry: ReaderRegistry | None = None) -> AdapterVersion | None:
    """The current reader; on first use, the configured ``CANDOR_READER_PATH`` becomes version one."""
    registry = registry or ReaderRegistry.for_settings(settings)
    return registry.ensure_default(settings.reader_path, WEIGHTS_FILE, "CANDOR_READER_PATH", "reader")


def serving_reader_folder(settings: Settings) -> Path | None:
    """The reader the API should load: the registry's current version when there is one, else
    ``CANDOR_READER_PATH``; None without a reader. Only with the reader layer configured."""
    if settings.reader_path is None:
        return None
    cur = ReaderRegistry.for_settings(settings).current()
    return cur.path if cur is not None else Path(settings.reader_path)
