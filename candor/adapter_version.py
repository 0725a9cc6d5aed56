"""A LoRA adapter's version: one definition for the model server, the answer log and the registry.

sha256 over adapter_config.json then the weights, first 16 hex digits: the version the model server
reports (``candor.model_server``), the one the answer log records and the key of the retraining loop's
registry (``candor.retrain.adapters``) are one string. The config is included because it changes
behaviour too (``lora_alpha`` scales the weights). Ground layer: hashlib only.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from candor.errors import InvalidInputError

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
ADAPTER_FILES = (CONFIG, WEIGHTS)
VERSION_CHARS = 16


def files_sha256(folder: Path, names: tuple[str, ...] = ADAPTER_FILES) -> str:
    """sha256 over the named files of a PEFT adapter folder, in order."""
    folder = Path(folder)
    if not all((folder / name).is_file() for name in ADAPTER_FILES):
        raise InvalidInputError(f"{folder} is not a PEFT adapter directory (needs {CONFIG} and {WEIGHTS})")
    digest = hashlib.sha256()
    for name in names:
        with (folder / name).open("rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def adapter_version(folder: Path) -> str:
    """The adapter's version id (16 hex digits)."""
    return files_sha256(folder)[:VERSION_CHARS]
