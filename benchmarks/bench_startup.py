"""Start-up cost of a short command: ``aromni tts "hello"`` on the bundled model, one thread, wall clock.

Each round runs, in turn and each in a fresh process: ``python -c "import torch"`` (the floor no aromni command
can go below), ``aromni --version`` (the CLI without torch) and ``aromni tts "hello"`` (``--threads 1``, to a
temporary WAV); the table gives the median wall time of each and what the command costs above the torch
import. ``--importtime`` also prints the slowest imports of one ``tts`` run (``python -X importtime``);
``--breakdown`` times the stages of the same work inside fresh processes (median per stage): interpreter,
``import torch``, the CLI modules, the rest of aromni's imports, loading the bundled model, and the synthesis.

    python benchmarks/bench_startup.py --rounds 7
    taskset -c 0 python benchmarks/bench_startup.py      # pinned to one core
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time


def timed(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


# one fresh process: stage timings as "name seconds" lines (what `aromni tts TEXT` does, stage by stage)
STAGES = """
import sys, time
t = [time.perf_counter()]
import torch
t.append(time.perf_counter())
import typer, aromni.app, aromni.commands.tts
t.append(time.perf_counter())
from aromni.core import tasks
from aromni.core.api import load
from aromni.core.decoding import options_for
t.append(time.perf_counter())
torch.set_num_threads(1)
omni = load(None, device="cpu", dtype="fp32")
t.append(time.perf_counter())
tasks.tts(omni, sys.argv[1], options_for("tts"), seed=0)
t.append(time.perf_counter())
names = ["import torch", "CLI modules (typer, aromni.app, the tts command)", "other aromni imports",
         "load the bundled model and tokenizers", "synthesis (decode + codec)"]
for n, a, b in zip(names, t, t[1:]):
    print(f"{n}\t{b - a:.4f}")
"""


def breakdown(text: str, rounds: int, env: dict) -> None:
    per: dict[str, list[float]] = {"interpreter (python -c pass)": []}
    for _ in range(rounds):
        per["interpreter (python -c pass)"].append(timed([sys.executable, "-c", "pass"], env))
        r = subprocess.run([sys.executable, "-c", STAGES, text], env=env, capture_output=True, text=True, check=True)
        for line in r.stdout.splitlines():
            name, sec = line.split("\t")
            per.setdefault(name, []).append(float(sec))
    print("| stage | median s |")
    print("|---|---|")
    for name, ts in per.items():
        print(f"| {name} | {statistics.median(ts):.3f} |")
    print(f"| sum | {sum(statistics.median(ts) for ts in per.values()):.3f} |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--text", default="hello")
    ap.add_argument("--importtime", action="store_true")
    ap.add_argument("--breakdown", action="store_true", help="also time the stages in fresh processes")
    a = ap.parse_args(argv)
    env = {k: v for k, v in os.environ.items() if k not in ("AROMNI_MODEL", "AROMNI_THREADS")}
    env["OMP_NUM_THREADS"] = "1"  # as --threads 1 does before torch starts
    out = os.path.join(tempfile.gettempdir(), f"bench_startup_{os.getpid()}.wav")
    cmds = {"import torch": [sys.executable, "-c", "import torch"],
            "aromni --version": [sys.executable, "-m", "aromni", "--version"],
            f"aromni tts {a.text!r}": [sys.executable, "-m", "aromni", "tts", a.text, "--threads", "1", "-q", "-o",
                                       out]}
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(a.rounds):
        for k, c in cmds.items():
            times[k].append(timed(c, env))
    print(f"# load average {os.getloadavg()[0]:.2f}, {a.rounds} interleaved rounds")
    print("| command | median wall s | above import torch s |")
    print("|---|---|---|")
    base = statistics.median(times["import torch"])
    for k, ts in times.items():
        med = statistics.median(ts)
        print(f"| `{k}` | {med:.3f} | {med - base:+.3f} |")
    if a.importtime:
        r = subprocess.run([sys.executable, "-X", "importtime", *cmds[f"aromni tts {a.text!r}"][1:]], env=env,
                           capture_output=True, text=True, check=True)
        rows = []
        for line in r.stderr.splitlines():
            if line.startswith("import time:") and "|" in line:
                _, cum, name = line[len("import time:"):].split("|")
                if cum.strip().isdigit():
                    rows.append((int(cum), name.rstrip()))
        print("# slowest imports (cumulative us, module):")
        for cum, name in sorted(rows, reverse=True)[:12]:
            print(f"#   {cum:>9} {name}")
    if a.breakdown:
        breakdown(a.text, a.rounds, env)
    if os.path.exists(out):
        os.remove(out)


if __name__ == "__main__":
    main()
