"""LoRA adapters for the embedded server: parsing, checking, and merging.

Adapters arrive in PEFT format (``adapter_config.json`` +
``adapter_model.safetensors``), the same files real TGI loads with
``LORA_ADAPTERS`` and vLLM with ``--lora-modules``.

The server merges each adapter into its own copy of the base weights instead
of running PEFT's unmerged LoRA layers: on this CPU the 210 extra small
matmuls per token made a decode step ~45% slower (batch 8: 139 ms → 202 ms),
and PEFT's mixed-batch mode slower still. A copy of SmolLM2-135M in bf16 is
270 MB, so a handful of adapters costs little memory, every adapter decodes at
base-model speed, and swapping an adapter is replacing one reference: requests
already running keep the weights they started with.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from candor.errors import InvalidInputError

ADAPTER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DEFAULT_ADAPTER_NAME = "refusal"


class AdapterError(InvalidInputError):
    """An adapter that cannot be served: bad name, bad files, wrong base model."""


@dataclass(frozen=True)
class AdapterSpec:
    name: str
    path: Path


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    path: Path
    version: str  # content hash of the adapter files, for the answer log and hot swaps
    base_model: str | None  # what adapter_config.json claims
    rank: int | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "version": self.version,
            "base_model": self.base_model,
            "rank": self.rank,
        }


def check_adapter_name(name: str) -> str:
    if not ADAPTER_NAME_RE.match(name or ""):
        raise AdapterError(
            f"invalid adapter name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def parse_adapter_spec(text: str) -> AdapterSpec:
    """``name=path`` → AdapterSpec (the format of TGI's LORA_ADAPTERS entries)."""
    name, sep, path = text.partition("=")
    if not sep or not path.strip():
        raise AdapterError(f"adapter {text!r} must be given as name=path")
    return AdapterSpec(check_adapter_name(name.strip()), Path(path.strip()).expanduser())


def parse_adapter_specs(items: list[str]) -> list[AdapterSpec]:
    """Parse several specs; comma-separated lists (as in LORA_ADAPTERS) are accepted too."""
    specs: list[AdapterSpec] = []
    for item in items:
        for part in item.split(","):
            if part.strip():
                specs.append(parse_adapter_spec(part.strip()))
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise AdapterError(f"adapter name {spec.name!r} is given twice")
        seen.add(spec.name)
    return specs


def read_adapter_config(path: Path) -> dict[str, Any]:
    """Check the folder holds a LoRA adapter in PEFT format and return its config."""
    if not path.is_dir():
        raise AdapterError(f"adapter folder {path} does not exist")
    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        raise AdapterError(f"{path} is not a PEFT adapter: adapter_config.json is missing")
    if not (path / "adapter_model.safetensors").is_file():
        raise AdapterError(f"{path} has no adapter_model.safetensors (PEFT's safetensors weights)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AdapterError(f"{config_file} is not readable JSON: {exc}") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{config_file} is not a JSON object")
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise AdapterError(f"{path} is a {config.get('peft_type')!r} adapter; only LoRA is served")
    return config


def adapter_version(path: Path) -> str:
    """A short content hash of the adapter's config and weights."""
    digest = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        with open(path / name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def _normalise_model_name(name: str) -> str:
    return name.rstrip("/").rsplit("/", 1)[-1].strip().lower()


def base_model_matches(claim: str, base_path: Path, base_model_id: str) -> bool:
    """Whether an adapter's ``base_model_name_or_path`` names the served model.

    It matches when it is the served directory itself, a directory that
    identifies as the same model (Candor's prepare marker), or a hub-style id
    whose last part equals the served model id's (``HuggingFaceTB/SmolLM2-135M-Instruct``).
    """
    from candor.service.model_prep import read_model_identity

    claimed = Path(claim).expanduser()
    try:
        if claimed.exists() and claimed.resolve() == base_path.resolve():
            return True
        if claimed.is_dir():
            claim = read_model_identity(claimed)
    except OSError:
        pass
    return _normalise_model_name(claim) == _normalise_model_name(base_model_id)


def inspect_adapter(spec: AdapterSpec, base_path: Path, base_model_id: str, allow_base_mismatch: bool) -> AdapterInfo:
    """Validate an adapter before any weights are loaded; raise AdapterError with the reason."""
    config = read_adapter_config(spec.path)
    claim = config.get("base_model_name_or_path")
    if claim and not allow_base_mismatch and not base_model_matches(str(claim), base_path, base_model_id):
        raise AdapterError(
            f"adapter {spec.name!r} ({spec.path}) was trained for base model {claim!r}, but this server "
            f"serves {base_model_id!r} ({base_path}). Its weights would not mean the same thing on this "
            "model. Pass --allow-base-mismatch (or allow_base_mismatch: true) to load it anyway."
        )
    rank = config.get("r")
    return AdapterInfo(
        name=spec.name,
        path=spec.path.resolve(),
        version=adapter_version(spec.path),
        base_model=str(claim) if claim else None,
        rank=int(rank) if isinstance(rank, int) else None,
    )


def build_merged_model(base_path: Path, adapter_path: Path, dtype: Any, attn_implementation: str | None = None) -> Any:
    """The base model with the LoRA adapter merged into its weights, in ``dtype``.

    The merge starts from the checkpoint's full-precision weights, read again
    from ``base_path``, and the sum is rounded to ``dtype`` once. Merging into
    weights that are already bf16 loses the adapter: a LoRA delta is mostly
    smaller than half a bf16 step of the weight it is added to, so W + delta
    rounds back to W. The shipped refusal adapter answered like the base model
    that way, and refuses as trained this way (tests/test_model_adapters.py).
    The float32 copy is transient (~0.5 GB for the 135M model).
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    work = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32, local_files_only=True, **kwargs)
    try:
        peft_model = PeftModel.from_pretrained(work, str(adapter_path), is_trainable=False)
        merged = peft_model.merge_and_unload(safe_merge=False)
    except Exception as exc:  # shape mismatch, unknown target modules
        raise AdapterError(f"adapter {adapter_path} cannot be applied to the base model: {exc}") from exc
    bad = [name for name, p in merged.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise AdapterError(f"adapter {adapter_path} makes weights NaN/inf once merged (e.g. {bad[0]})")
    return merged.to(dtype).eval()
