"""Export a served model to ONNX for the onnxruntime engine, once per set of weights.

ONNX Runtime GenAI's model builder (``python -m onnxruntime_genai.models.builder``) reads a
Hugging Face model directory and writes an ONNX decoder with its KV cache, MatMulNBits weight-only
int4/int8 projections (or float32), and a ``genai_config.json``. Candor runs it as a subprocess:
its memory (a float32 copy of the model) goes away with it, and its command line is its stable
interface. Adapters are merged into the float32 weights first (``adapters.build_merged_model``,
as the torch engine serves them) and the merged model is exported like a base model.

Exports are cached under ``Settings.onnx_cache_dir``, one folder per (base weights, adapter
version, precision, builder version); a folder is complete when ``genai_config.json`` is in it (it
is renamed into place whole). The int4/int8 builds use ``accuracy_level=4``: activations are
quantized to int8 inside MatMulNBits, so prefill runs on integer dot products (AVX2 or AVX-512
VNNI), not on weights dequantized to float32. The output layer (``lm_head``) stays float32.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from candor.errors import CandorError
from candor.model_server.adapters import build_merged_model
from candor.profile import CPU

log = logging.getLogger(__name__)

BUILDER_MODULE = "onnxruntime_genai.models.builder"
CONFIG_FILE = "genai_config.json"
# Tokenizer and template files a merged model directory needs beside its weights (the builder reads them).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
BUILDER_PRECISION = {"int4": "int4", "int8": "int8", "float32": "fp32"}
# Part of every cache key: raise it whenever the builder's command line below changes, so old exports are not reused.
EXPORT_RECIPE = 3


class OnnxExportError(CandorError):
    """The model could not be exported to ONNX (or onnxruntime-genai is not installed)."""


def builder_version() -> str:
    try:
        return metadata.version("onnxruntime-genai")
    except metadata.PackageNotFoundError as exc:
        raise OnnxExportError(
            "the onnxruntime engine needs onnxruntime-genai, onnx and onnx-ir (Candor's dependencies): pip install -e ."
        ) from exc


def weights_fingerprint(model_dir: Path) -> str:
    """Names, sizes and mtimes of a model directory's weight and config files (cheap; not a content hash)."""
    parts = []
    for path in sorted(model_dir.iterdir()):
        if path.suffix in {".safetensors", ".json", ".bin"} and path.is_file():
            st = path.stat()
            parts.append(f"{path.name}:{st.st_size}:{st.st_mtime_ns}")
    if not parts:
        raise OnnxExportError(f"{model_dir} holds no model files to export")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def export_key(base_dir: Path, adapter_version: str | None, precision: str) -> str:
    parts = [weights_fingerprint(base_dir), adapter_version or "base", precision, builder_version(), str(EXPORT_RECIPE)]
    text = "|".join(parts)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def set_threads(onnx_dir: Path, threads: int) -> None:
    """Write the session's intra-op thread count into ``genai_config.json`` (the builder leaves it to ORT's default)."""
    path = onnx_dir / CONFIG_FILE
    config = json.loads(path.read_text(encoding="utf-8"))
    options = config["model"]["decoder"].setdefault("session_options", {})
    options["intra_op_num_threads"] = threads
    options["inter_op_num_threads"] = 1
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")


def run_builder(hf_dir: Path, out_dir: Path, precision: str, work_dir: Path) -> None:
    """One builder run, ``hf_dir`` → ``out_dir``; raises OnnxExportError with the builder's last words."""
    if precision not in BUILDER_PRECISION:
        raise OnnxExportError(f"unknown onnx precision {precision!r}: use {', '.join(BUILDER_PRECISION)}")
    cmd = [
        sys.executable,
        "-m",
        BUILDER_MODULE,
        "-i",
        str(hf_dir),
        "-o",
        str(out_dir),
        "-p",
        BUILDER_PRECISION[precision],
        "-e",
        CPU,  # the builder's execution-provider name for the CPU is the device name
        "-c",
        str(work_dir / "builder-cache"),
    ]
    if precision in {"int4", "int8"}:
        # lm_head stays float32: quantized too, it changed 2.7% of first tokens and cost 1.8 answered-F1 on 300 dev
        # questions; float32, 2.0% and 0.5 (bench/results/onnx_agreement*.json), for 52 against 56-63 decode tok/s
        cmd += ["--extra_options", "accuracy_level=4", "nodes_to_exclude=/lm_head/MatMul"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0 or not (out_dir / CONFIG_FILE).is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise OnnxExportError(f"the ONNX export of {hf_dir} failed: {' / '.join(tail) or 'no output'}")


def ensure_export(
    base_dir: Path,
    cache_dir: Path,
    precision: str,
    threads: int,
    *,
    adapter_path: Path | None = None,
    adapter_version: str | None = None,
) -> Path:
    """The ONNX folder for the base model (or the base with ``adapter_path`` merged), exported if not cached."""
    key = export_key(base_dir, adapter_version if adapter_path else None, precision)
    target = cache_dir / key
    if (target / CONFIG_FILE).is_file():
        set_threads(target, threads)
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f".{key}-", dir=cache_dir) as tmp:
        work = Path(tmp)
        source = base_dir
        if adapter_path is not None:
            source = work / "merged"
            save_merged(base_dir, adapter_path, source)
        out = work / "onnx"
        run_builder(source, out, precision, work)
        set_threads(out, threads)
        try:
            out.rename(target)
        except OSError:  # another process finished the same export first: theirs is as good
            if not (target / CONFIG_FILE).is_file():
                raise
    log.info(
        "exported %s to ONNX (%s) in %.1f s: %s",
        adapter_path or base_dir,
        precision,
        time.perf_counter() - started,
        target,
    )
    return target


def save_merged(base_dir: Path, adapter_path: Path, out_dir: Path) -> None:
    """The base model with the adapter merged, float32, saved as a Hugging Face directory with the base's tokenizer."""
    merged = build_merged_model(base_dir, adapter_path, "float32")
    merged.save_pretrained(out_dir)
    del merged
    for name in _TOKENIZER_FILES:
        if (base_dir / name).is_file():
            shutil.copy2(base_dir / name, out_dir / name)
