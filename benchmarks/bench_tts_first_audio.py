"""First-audio latency of `aromni tts` on stdout for a short and a long text (paired, interleaved runs).

Long text is spoken sentence by sentence, so the first audio should not wait for the rest of the text:
the ratio long/short should be about 1.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_tts_first_audio.py --runs 3
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time


def text(n_bytes: int, seed: int = 0) -> str:
    words = "the cat sat on a mat while the dog ran to the red ball and a bird sang in the tall tree".split()
    rng, out = random.Random(seed), []
    while sum(len(s) + 1 for s in out) < n_bytes:
        out.append(" ".join(rng.choice(words) for _ in range(9)).capitalize() + ".")
    return " ".join(out)[:n_bytes].rsplit(" ", 1)[0] + "."


def first_audio(path: str, need: int = 1000) -> float:
    """Seconds from start until ``need`` bytes of audio have arrived on stdout (the WAV header comes with the
    first audio)."""
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        p = subprocess.Popen([sys.executable, "-m", "aromni", "tts", "-q"], stdin=f, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL)
    got = 0
    while got < need:
        b = p.stdout.read(need - got)
        if not b:
            break
        got += len(b)
    dt = time.perf_counter() - t0
    p.kill()
    p.wait()
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        files = {}
        for n in (100, 100_000):
            files[n] = os.path.join(d, f"{n}.txt")
            with open(files[n], "w") as f:
                f.write(text(n))
        times = {n: [] for n in files}
        for _ in range(args.runs):
            for n, path in files.items():
                times[n].append(first_audio(path))
    cpu = platform.processor() or platform.machine()
    print(f"CPU: {cpu}, {os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}")
    for n, ts in times.items():
        print(f"{n:>7} bytes: first audio median {statistics.median(ts):.2f} s  ({', '.join(f'{t:.2f}' for t in ts)})")
    ratios = [b / a for a, b in zip(times[100], times[100_000])]
    print(f"long/short ratio (paired): median {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
