"""Step-loop time with sharded checkpoints written synchronously vs in the background (``checkpoint.async``).

2 gloo ranks, fp32, a model of ``--layers`` blocks (dim 1024, ffn 2816, 16 heads), a DCP checkpoint after every
step. The time per step is the mean interval between consecutive steps' metrics (steps 2 to the end), so it
includes the save (sync) or the wait for the copy of the state (async). Runs alternate sync/async
(``--repeats`` pairs); the ratio is per pair.

    .venv/bin/python benchmarks/bench_train_async.py --layers 8 --steps 6 --repeats 2
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from _train_data import lm_config, write_upstream_shards  # noqa: E402


def run(cfg: str, out: str, layers: int, steps: int, async_: bool) -> float:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "aromni",
           "train", cfg, f"out_dir={out}", "train.strategy=fsdp", "train.precision=fp32", "data.batch_size=1",
           "model.config=7b", f"model.overrides={{n_layers: {layers}, dim: 1024, intermediate_size: 2816, "
           "n_heads: 16, n_kv_heads: 16, max_seq_len: 128}", f"train.max_steps={steps}", "checkpoint.every=1",
           "checkpoint.keep=2", f"checkpoint.async={str(async_).lower()}", "-q"]
    r = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    if r.returncode != 0 and "terminate called without an active exception" not in r.stderr:
        raise SystemExit(r.stderr[-3000:])
    with open(os.path.join(out, "metrics.jsonl")) as f:
        t = [json.loads(line)["time"] for line in f]
    return (t[-1] - t[0]) / (len(t) - 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench_train_async-")
    cfg = lm_config(tmp, write_upstream_shards(os.path.join(tmp, "up"), n_files=1, per_file=16))
    ratios = []
    for i in range(a.repeats):
        s = run(cfg, f"{tmp}/sync-{i}", a.layers, a.steps, False)
        b = run(cfg, f"{tmp}/async-{i}", a.layers, a.steps, True)
        ratios.append(b / s)
        print(f"pair {i + 1}: s/step with a save every step: sync {s:.2f}, async {b:.2f} (async/sync {b / s:.2f})",
              flush=True)
    print(f"mean async/sync step time: {sum(ratios) / len(ratios):.2f}")


if __name__ == "__main__":
    main()
