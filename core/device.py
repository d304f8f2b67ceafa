"""Device, dtype and seeding helpers."""
from __future__ import annotations

import random

import numpy as np
import torch

from .errors import AromniError

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def resolve_device(name: str | None = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu."""
    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise AromniError(f"unknown device {name!r} (auto, cpu, cuda, cuda:N, mps)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AromniError(f"device {name!r} requested but CUDA is not available")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise AromniError(f"device {name!r} requested but MPS is not available")
    return dev


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of x86 CPUs with bf16 matrix instructions


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU multiplies bf16 in hardware (x86 ``avx512_bf16`` / ``amx_bf16``; read from
    ``/proc/cpuinfo``, or ``cpuinfo`` text). Without it bf16 autocast is emulated: a small LM trained ~17x
    slower than in fp32 on a 2-core AVX2 EPYC."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[-1].split())
            return any(f in flags for f in BF16_CPU_FLAGS)
    return False


def auto_bf16(device: torch.device) -> bool:
    """``precision: auto``: bf16 where the device computes it natively (a bf16-capable GPU, a CPU per
    ``cpu_has_native_bf16``), else fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on CUDA with bf16 support, else fp32.

    CPUs stay in fp32 even with native bf16 (``avx512_bf16``): on such an AMD EPYC, one thread, the bundled
    model's decode step was slower in bf16 (fp32/bf16 0.94x at batch 1, 0.79x at batch 8; its matmuls are small
    GEMVs) while only a 128-token prefill gained (1.4-1.8x), which does not pay for the slower steps
    (``benchmarks/bench_decode.py --lm-step --dtype bf16`` against the default)."""
    if name in (None, "", "auto"):
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise AromniError(f"unknown dtype {name!r} (auto, fp32, bf16, fp16)")
    return DTYPES[name]


def seed_everything(seed: int | None) -> torch.Generator | None:
    """Seed python, numpy and torch; returns a CPU generator for sampling (None if seed is None)."""
    if seed is None:
        return None
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def default_threads() -> None:
    """Apply aromni's thread policy (core.threads: $AROMNI_THREADS, $OMP_NUM_THREADS, else its default)."""
    from .threads import apply_threads

    apply_threads()
