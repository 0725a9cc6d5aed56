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

import json
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from candor.adapter_version import adapter_version
from candor.errors import InvalidInputError
from candor.hardware import resolve_dtype
from candor.model_server.model_prep import read_model_identity
from candor.profile import is_cpu_only

log = logging.getLogger(__name__)

INT8 = "int8"  # Settings.model_dtype: dynamic int8 Linear weights (see quantize_int8)
_int8_logged = False

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


def _normalise_model_name(name: str) -> str:
    return name.rstrip("/").rsplit("/", 1)[-1].strip().lower()


def base_model_matches(claim: str, base_path: Path, base_model_id: str) -> bool:
    """Whether an adapter's ``base_model_name_or_path`` names the served model.

    It matches when it is the served directory itself, a directory that
    identifies as the same model (Candor's prepare marker), or a hub-style id
    whose last part equals the served model id's (``HuggingFaceTB/SmolLM2-135M-Instruct``).
    """
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


def load_dtype(name: str) -> Any:
    """The torch dtype to load the checkpoint in for serving dtype ``name`` ("int8" loads float32, then quantizes;
    "auto" is this CPU's fast float type, ``candor.hardware``).

    Never ``getattr(torch, name)`` on a serving dtype: ``torch.int8`` exists, and loading weights
    as int8 integers would truncate them silently.
    """
    import torch

    name = resolve_dtype(name)
    if name == INT8:
        return torch.float32
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InvalidInputError(f"unknown model dtype {name!r}: use auto, bfloat16, float32, float16 or int8")
    return dtype


def quantize_int8(model: Any) -> Any:
    """Dynamic int8 quantization of every ``nn.Linear``, lm_head included, in place; returns the model.

    Weights become int8 with one scale per output channel; activations stay float32 and are
    quantized per call (torch's dynamic quantization, fbgemm kernels). Per output channel matters:
    with one scale per tensor, lm_head (the tied 49,152-row embedding) and the projections lost so
    much that the float32 model's top token changed on 2 of 3 probe prompts; per channel it did on
    none of them (it still does where float32 is undecided: docs/performance.md). The tie with the
    input embedding is not kept (lm_head gets its own packed int8 copy, the embedding stays
    float32); the weights never change while serving, so the two cannot drift.
    CPU only: the quantized kernels have no CUDA implementation.
    """
    global _int8_logged
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    devices = {p.device.type for p in model.parameters()}
    if not is_cpu_only(model):
        raise InvalidInputError(f"model dtype int8 is CPU only, but the weights are on {sorted(devices)}")
    if not _int8_logged:
        _int8_logged = True
        log.info(
            "model dtype int8: torch.ao.quantization.quantize_dynamic (per-channel int8 Linear weights, "
            "fp32 activations). torch marks torch.ao.quantization deprecated; its deprecation warnings are not shown"
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated", category=Warning)
        warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions.*deprecated")
        return quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, inplace=True)


def finish_model(model: Any, dtype: Any) -> Any:
    """A float32 model made ready for serving in ``dtype`` (a name or a torch dtype): cast, or quantized for int8."""
    if dtype == INT8:
        return quantize_int8(model.float().eval())
    return model.to(load_dtype(dtype) if isinstance(dtype, str) else dtype).eval()


def build_merged_model(base_path: Path, adapter_path: Path, dtype: Any, attn_implementation: str | None = None) -> Any:
    """The base model with the LoRA adapter merged into its weights, in ``dtype`` (torch dtype or serving name).

    The merge starts from the checkpoint's full-precision weights, read again
    from ``base_path``, and the sum is rounded to ``dtype`` once. Merging into
    weights that are already bf16 loses the adapter: a LoRA delta is mostly
    smaller than half a bf16 step of the weight it is added to, so W + delta
    rounds back to W. The shipped refusal adapter answered like the base model
    that way, and refuses as trained this way (tests/test_model_adapters.py).
    The float32 copy is transient (~0.5 GB for the 135M model). For "int8" the
    merged float32 weights are quantized (``quantize_int8``), like the base model's.
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
    return finish_model(merged, dtype)
