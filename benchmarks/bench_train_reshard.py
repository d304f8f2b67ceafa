"""Resume across world sizes, 4 -> 2 -> 1 ranks (FSDP2, gloo, CPU, fp32), against the uninterrupted 4-rank run.

A tiny model with the perceptual loss trains ``3 * --leg`` steps at a global batch of 4 sequences: uninterrupted on
4 ranks (1 sequence each), and in three legs from the same out_dir: 4 ranks up to step ``leg``, resumed on 2
ranks (2 sequences each) up to ``2 * leg``, resumed on 1 rank (4 sequences) to the end. Every step of a leg sees
the same samples as the same step of the uninterrupted run. For scale, an uninterrupted 1-rank run shows how far
two world sizes drift apart with no resume at all. Prints per-step losses and the max |difference| per leg.

    .venv/bin/python benchmarks/bench_train_reshard.py [--leg 3]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from _train_data import lm_config, write_codebook, write_upstream_shards  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
GLOBAL_BATCH = 4


def train(cfg: str, out: str, ranks: int, *extra: str) -> None:
    args = ["-m", "aromni", "train", cfg, f"out_dir={out}", f"data.batch_size={GLOBAL_BATCH // ranks}", *extra, "-q"]
    launch = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                  f"--nproc_per_node={ranks}"]
    r = subprocess.run(launch + args, env=ENV, capture_output=True, text=True, timeout=1200)
    if r.returncode != 0 and "terminate called without an active exception" not in r.stderr:
        raise SystemExit(f"{ranks} rank(s): exit {r.returncode}: {r.stderr[-3000:]}")


def metrics(out: str) -> list[dict]:
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--leg", type=int, default=3, help="steps per leg")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench_train_reshard-")
    data = write_upstream_shards(os.path.join(tmp, "up"), n_files=2, per_file=20)
    cfg = lm_config(tmp, data)
    n = 3 * a.leg
    common = ["train.strategy=fsdp", "train.precision=fp32", "optim.schedule=linear", "optim.warmup_steps=1",
              "loss.perceptual_weight=0.5", "loss.perceptual_tasks=null", "data.shuffle_buffer=6",
              f"loss.codebook={write_codebook(os.path.join(tmp, 'cb.npy'))}", f"train.max_steps={n}",
              f"checkpoint.every={a.leg}", "checkpoint.keep=5"]
    train(cfg, f"{tmp}/ref4", 4, *common)
    train(cfg, f"{tmp}/ref1", 1, *common)
    legs = f"{tmp}/legs"
    train(cfg, legs, 4, *common, f"train.stop_at={a.leg}")
    train(cfg, legs, 2, *common, f"train.stop_at={2 * a.leg}", "--resume")
    train(cfg, legs, 1, *common, "--resume")
    ref, one, got = metrics(f"{tmp}/ref4"), metrics(f"{tmp}/ref1"), metrics(legs)
    assert [m["step"] for m in got] == list(range(1, n + 1)), [m["step"] for m in got]
    print("step  ranks  loss (4 ranks, uninterrupted)  loss (4->2->1)  |diff|     |grad-norm diff|  "
          "|diff| 1-rank run vs 4-rank run")
    for r, g, o in zip(ref, got, one):
        ranks = 4 if g["step"] <= a.leg else 2 if g["step"] <= 2 * a.leg else 1
        assert r["tokens"] == g["tokens"] == o["tokens"]
        print(f"{g['step']:4d}  {ranks:5d}  {r['loss']:.9f}                  {g['loss']:.9f}     "
              f"{abs(r['loss'] - g['loss']):.2e}   {abs(r['grad_norm'] - g['grad_norm']):.2e}          "
              f"{abs(r['loss'] - o['loss']):.2e}")
    for name, lo, hi in (("4 ranks", 0, a.leg), ("2 ranks (resumed)", a.leg, 2 * a.leg),
                         ("1 rank (resumed)", 2 * a.leg, n)):
        dl = max(abs(r["loss"] - g["loss"]) for r, g in zip(ref[lo:hi], got[lo:hi]))
        dg = max(abs(r["grad_norm"] - g["grad_norm"]) for r, g in zip(ref[lo:hi], got[lo:hi]))
        print(f"steps {lo + 1}-{hi} on {name}: max |loss diff| {dl:.2e}, max |grad-norm diff| {dg:.2e}")
    d1 = max(abs(r["loss"] - o["loss"]) for r, o in zip(ref, one))
    print(f"uninterrupted 1-rank run vs 4-rank run, steps 1-{n}: max |loss diff| {d1:.2e}")


if __name__ == "__main__":
    main()
