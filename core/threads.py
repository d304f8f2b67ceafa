"""How many CPU threads aromni's tensor work uses (``--threads N``, ``$AROMNI_THREADS``).

The first of these that is set decides: the ``requested`` count, ``$AROMNI_THREADS``, ``$OMP_NUM_THREADS``;
else ``DEFAULT_THREADS``. ``0`` means one thread per core (torch's own default).

Why one thread by default: decoding is a chain of small matrix-vector products, and on a machine where
anything else runs (another aromni in a pipeline, a build), torch's threads spin waiting on each other: the
bundled model's TTS took 2-9x longer with all cores than with one (docs/performance.md, measured with
benchmarks/bench_threads.py). Bigger models and training can ask for more with ``--threads``.

``apply_threads`` sets ``OMP_NUM_THREADS`` when torch is not imported yet (the OpenMP pool is sized when torch
starts, so commands call it before importing torch), and ``torch.set_num_threads`` otherwise. This module does
not import torch itself.
"""
from __future__ import annotations

import os
import platform
import sys

from .errors import AromniError

ENV = "AROMNI_THREADS"
DEFAULT_THREADS = 1


def cpu_name(cpuinfo: str | None = None) -> str:
    """This CPU's model name (``/proc/cpuinfo``, or ``cpuinfo`` text), else what ``platform`` says."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    return platform.processor() or "unknown CPU"


def cores() -> int:
    """CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _count(value: str | int, what: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise AromniError(f"{what} must be a whole number of threads (0: one per core), got {value!r}") from None
    if n < 0:
        raise AromniError(f"{what} must be >= 0 (0: one per core), got {n}")
    return n


def resolve_threads(requested: int | None = None, environ: dict | None = None) -> int:
    """The thread count to use (>= 1), by the precedence in the module's docstring."""
    env = os.environ if environ is None else environ
    if requested is not None:
        n = _count(requested, "threads")
    elif env.get(ENV, "").strip():
        n = _count(env[ENV].strip(), ENV)
    elif env.get("OMP_NUM_THREADS", "").strip().isdigit():
        n = int(env["OMP_NUM_THREADS"].strip())
    else:
        n = DEFAULT_THREADS
    return n if n > 0 else cores()


def apply_threads(requested: int | None = None) -> int:
    """Resolve the thread count and make torch use it; returns the count."""
    n = resolve_threads(requested)
    os.environ[ENV] = str(n)  # later calls (and child processes) keep this count
    torch = sys.modules.get("torch")
    if torch is None:
        os.environ["OMP_NUM_THREADS"] = str(n)
        os.environ.setdefault("MKL_NUM_THREADS", str(n))
    else:
        torch.set_num_threads(n)
    return n
