"""``auto`` dtype: bf16 only where the CPU runs it fast, float32 elsewhere (candor/hardware.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from candor import hardware
from candor.settings import Settings

AVX2_HOST = "fpu sse4_2 avx avx2 fma f16c"
AVX512_HOST = AVX2_HOST + " avx512f avx512dq avx512bw avx512vl avx512cd"


@pytest.fixture
def flags(monkeypatch: pytest.MonkeyPatch):
    """Set this process's CPU flags (CANDOR_CPU_FLAGS) and forget the cached choice."""

    def set_flags(value: str) -> None:
        monkeypatch.setenv("CANDOR_CPU_FLAGS", value)
        hardware.auto_float_dtype.cache_clear()

    yield set_flags
    hardware.auto_float_dtype.cache_clear()


def test_cpuinfo_flags_are_read_for_x86_and_arm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CANDOR_CPU_FLAGS", raising=False)
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 avx512_bf16\n\n", encoding="utf-8")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n", encoding="utf-8")
    assert hardware.cpu_flags(x86) == {"fpu", "avx2", "avx512_bf16"}
    assert hardware.cpu_flags(arm) == {"fp", "asimd", "bf16", "i8mm"}
    assert hardware.cpu_flags(tmp_path / "missing") == frozenset()


@pytest.mark.parametrize(
    ("cpu", "fast"),
    [
        (AVX2_HOST, False),  # the 2-core CI machine: bf16 runs in slow reference loops
        (AVX2_HOST + " avx512f", False),  # AVX-512 foundation alone is not oneDNN's bf16 path
        (AVX512_HOST, True),  # avx512_core: oneDNN emulates bf16 fast
        (AVX2_HOST + " amx_bf16", True),
        (AVX2_HOST + " avx512_bf16", True),
        ("fp asimd bf16", True),  # ARM with the bf16 extension
        ("", False),  # unknown CPU: float32 is always correct
    ],
)
def test_bf16_is_fast_only_with_the_instructions_for_it(cpu: str, fast: bool) -> None:
    assert hardware.bf16_is_fast(frozenset(cpu.split())) is fast


def test_auto_resolves_in_settings_and_in_load_dtype(flags) -> None:
    import torch

    from candor.model_server.adapters import load_dtype

    flags(AVX2_HOST)
    assert Settings().model_dtype == "float32"  # the default is auto
    assert load_dtype("auto") == torch.float32
    flags(AVX512_HOST)
    assert Settings(model_dtype="auto").model_dtype == "bfloat16"
    assert load_dtype("auto") == torch.bfloat16
    assert Settings(model_dtype="bfloat16").model_dtype == "bfloat16"  # an explicit choice stands
    flags(AVX2_HOST)
    assert Settings(model_dtype="int8").model_dtype == "int8"


def test_training_computes_in_the_resolved_dtype(flags, ft_base_model: Path) -> None:
    """The trainer's base weights follow compute_dtype; auto on an AVX2 CPU is float32."""
    import torch

    from candor.errors import InvalidInputError
    from candor.finetune.train import TrainConfig, load_model

    flags(AVX2_HOST)
    model, precision = load_model(TrainConfig(quantization="none"), ft_base_model)
    assert (precision, model.lm_head.weight.dtype) == ("fp32", torch.float32)
    model, precision = load_model(TrainConfig(quantization="none", compute_dtype="bfloat16"), ft_base_model)
    assert (precision, model.lm_head.weight.dtype) == ("bf16", torch.bfloat16)
    with pytest.raises(InvalidInputError, match="compute_dtype"):
        TrainConfig(compute_dtype="float16")
