"""Thread policies on the bundled model, on the machine as found and with one more CPU-bound process running.

Candidates (each run is a fresh process, so OpenMP settings apply from its start):

- ``all``: torch's own default, one thread per core (``--threads 0``);
- ``one``: one thread (``--threads 1``);
- ``free``: cores minus the load average (rounded, at least 1), read just before the run;
- ``passive``: all cores with ``OMP_WAIT_POLICY=PASSIVE`` (idle OpenMP workers sleep instead of spinning);
- ``default``: whatever aromni does with no option (the policy in core/threads.py).

Workloads: ``aromni tts "a large red circle on the left"`` (wall clock of the whole command) and an LM-step
micro-benchmark (median ms of one batch-1 decode step of the bundled model after an 8-token prefill).
Runs are interleaved: each round runs every candidate once in turn, so drift in the machine's load affects all
alike; the table reports medians and each candidate's median per-round ratio to ``one``.

    python benchmarks/bench_threads.py                  # as found and loaded, 3 rounds
    python benchmarks/bench_threads.py --rounds 5 --states loaded --workloads step
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from aromni.core.threads import cores, cpu_name

TTS_TEXT = "a large red circle on the left"
CANDIDATES = ("all", "one", "free", "passive", "default")

STEP_SNIPPET = r"""
import sys, time
from aromni.core.threads import apply_threads
apply_threads(None if sys.argv[1] == "none" else int(sys.argv[1]))
import torch
from aromni.core.api import load
m = load(None, device="cpu", dtype="fp32", tokenizers=False).model
ids = torch.randint(0, m.cfg.vocab_size, (1, 64), generator=torch.Generator().manual_seed(0))
ts = []
with torch.inference_mode():
    for rep in range(5):
        st = m.setup_cache(1, 128)
        m(ids[:, :8], st)
        t0 = time.perf_counter()
        for i in range(40):
            m(ids[:, 8 + i % 50: 9 + i % 50], st)
        ts.append((time.perf_counter() - t0) / 40)
print(sorted(ts)[len(ts) // 2] * 1000)
"""


def setting(cand: str) -> tuple[str | None, dict]:
    """(--threads value or None, extra environment) of a candidate."""
    if cand == "all":
        return "0", {}
    if cand == "one":
        return "1", {}
    if cand == "free":
        return str(max(1, cores() - round(os.getloadavg()[0]))), {}
    if cand == "passive":
        return "0", {"OMP_WAIT_POLICY": "PASSIVE"}
    return None, {}


def base_env() -> dict:
    drop = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS", "AROMNI_THREADS",
            "AROMNI_MODEL")
    return {k: v for k, v in os.environ.items() if k not in drop}


def run_tts(cand: str) -> float:
    threads, extra = setting(cand)
    out = os.path.join(tempfile.gettempdir(), f"bench_threads_{os.getpid()}.wav")
    cmd = [sys.executable, "-m", "aromni", "tts", TTS_TEXT, "-q", "-o", out, "--seed", "0"]
    if threads is not None:
        cmd += ["--threads", threads]
    for _ in range(2):  # one retry: a run that failed is not timed
        t0 = time.perf_counter()
        r = subprocess.run(cmd, env=base_env() | extra, capture_output=True, text=True)
        if r.returncode == 0:
            return time.perf_counter() - t0
    raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr[-500:]}")


def run_step(cand: str) -> float:
    threads, extra = setting(cand)
    out = subprocess.run([sys.executable, "-c", STEP_SNIPPET, threads or "none"], env=base_env() | extra,
                         check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def measure(workload: str, rounds: int, cands: list[str]) -> dict[str, list[float]]:
    fn = run_tts if workload == "tts" else run_step
    res: dict[str, list[float]] = {c: [] for c in cands}
    for _ in range(rounds):
        for c in cands:
            res[c].append(fn(c))
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--states", nargs="+", default=["as-is", "loaded"], choices=["as-is", "loaded"],
                    help="as-is: the machine as found (its load average is printed); loaded: plus one CPU-bound "
                         "process started by the benchmark")
    ap.add_argument("--workloads", nargs="+", default=["step", "tts"], choices=["step", "tts"])
    ap.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=CANDIDATES)
    a = ap.parse_args(argv)
    print(f"# {cpu_name()}, {cores()} cores, load average at start {os.getloadavg()[0]:.2f}; "
          f"{a.rounds} interleaved rounds")
    print("| machine | workload | " + " | ".join(a.candidates) + " |")
    print("|---|---|" + "---|" * len(a.candidates))
    for state in a.states:
        hog = None
        if state == "loaded":
            hog = subprocess.Popen([sys.executable, "-c", "while 1: pass"])
            time.sleep(1.0)
        print(f"# {state}: load average {os.getloadavg()[0]:.2f} before the runs", flush=True)
        try:
            for wl in a.workloads:
                res = measure(wl, a.rounds, a.candidates)
                unit = "s" if wl == "tts" else "ms"
                cells = []
                for c in a.candidates:
                    med = statistics.median(res[c])
                    ratio = statistics.median(x / o for x, o in zip(res[c], res["one"])) if "one" in res else None
                    cells.append(f"{med:.2f} {unit}" + (f" ({ratio:.2f}x)" if ratio is not None else ""))
                name = "tts wall" if wl == "tts" else "LM step"
                print(f"| {state} | {name} | " + " | ".join(cells) + " |", flush=True)
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()


if __name__ == "__main__":
    main()
