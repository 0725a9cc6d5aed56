"""Which float type runs fast on this machine: ``auto`` resolves here.

bf16 is only fast on a CPU whose oneDNN kernels handle it: x86 with the
AVX-512 core set (emulated bf16) or native bf16 (``avx512_bf16``, AMX), or an
ARM CPU with the ``bf16`` extension. Elsewhere torch falls back to slow
reference loops. Measured on a 2-core AVX2-only CPU (SmolLM2-135M, 1 thread,
bench/results/dtype-avx2.json): an 8x400-token prefill took 89.6 s in bf16
against 14.7 s in float32, a decode step 0.38 s against 0.15 s, a training
step on 4x256 tokens 244 s against 16 s. So ``auto`` means bf16 where it is
fast and float32 everywhere else.

Read from ``/proc/cpuinfo`` (no torch import); ``CANDOR_CPU_FLAGS`` overrides
the flags, for tests and for machines where the file lies.
This module is ground level: it imports nothing else of Candor's.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

AUTO = "auto"
# oneDNN's bf16 paths: avx512_core (f, bw, vl, dq) emulates, avx512_bf16 / amx_bf16 are native
_X86_AVX512_CORE = {"avx512f", "avx512bw", "avx512vl", "avx512dq"}
_X86_NATIVE_BF16 = {"avx512_bf16", "amx_bf16"}


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (x86 ``flags``, ARM ``Features``); empty when unknown."""
    override = os.environ.get("CANDOR_CPU_FLAGS")
    if override is not None:
        return frozenset(override.replace(",", " ").split())
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def bf16_is_fast(flags: frozenset[str] | None = None) -> bool:
    """True when this CPU runs bf16 matmuls at least as fast as float32."""
    flags = cpu_flags() if flags is None else flags
    return bool(flags & _X86_NATIVE_BF16) or flags >= _X86_AVX512_CORE or "bf16" in flags


@lru_cache(maxsize=1)
def auto_float_dtype() -> str:
    """``bfloat16`` where bf16 is fast on this CPU, else ``float32``."""
    return "bfloat16" if bf16_is_fast() else "float32"


def resolve_dtype(name: str) -> str:
    """A dtype name with ``auto`` replaced by this machine's choice; other names pass through."""
    return auto_float_dtype() if name == AUTO else name
