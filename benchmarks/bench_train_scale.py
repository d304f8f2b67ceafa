"""Peak RSS per rank of sharded training (FSDP2, gloo, CPU) vs one process holding the whole model.

A 7B-shaped model (default dim 4096, ffn 11008, 32 heads; ``--layers`` blocks, a small vocabulary) is trained for two
steps from a random init, checkpointed (DCP) and exported (streamed bundle). Each process's RSS is sampled
every 50 ms from /proc; the goal per rank is 1/N of the one-process footprint plus 15 %. FSDP2 gathers one
block unsharded (and its gradients) at a time, so the per-rank peak approaches 1/N only with many blocks.

    .venv/bin/python benchmarks/bench_train_scale.py --ranks 4 --layers 1
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from _train_data import lm_config, write_upstream_shards  # noqa: E402


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for ln in f:
                if ln.startswith("VmRSS:"):
                    return int(ln.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def run(cmd: list[str]) -> tuple[dict[int, int], float]:
    """Peak RSS of every worker process (torchrun's children, or the process itself) and wall time."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.time()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak: dict[int, int] = {}
    while p.poll() is None:
        kids = _descendants(p.pid)
        for pid in kids or [p.pid]:
            peak[pid] = max(peak.get(pid, 0), _rss(pid))
        time.sleep(0.05)
    err = p.stderr.read()
    if p.returncode != 0 and "terminate called without an active exception" not in err:
        raise SystemExit(f"exit {p.returncode}: {err[-3000:]}")
    return peak, time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--ffn", type=int, default=11008)
    ap.add_argument("--heads", type=int, default=32)
    a = ap.parse_args()
    shape = {"n_layers": a.layers, "dim": a.dim, "intermediate_size": a.ffn, "n_heads": a.heads,
             "n_kv_heads": a.heads, "max_seq_len": 128}
    tmp = tempfile.mkdtemp(prefix="bench_train_scale-")
    data = write_upstream_shards(os.path.join(tmp, "up"), n_files=1, per_file=16)
    cfg = lm_config(tmp, data)
    common = ["model.config=7b", f"model.overrides={{n_layers: {a.layers}, max_seq_len: 128}}",
              "train.max_steps=2", "checkpoint.every=2", "checkpoint.export_bundle=true", "train.precision=fp32",
              "data.batch_size=1", "-q"]
    from dataclasses import replace

    from aromni.core.model import get_config
    from aromni.core.train.plan import n_params

    P = n_params(replace(get_config("7b"), **shape, vocab_size=244))
    one, t1 = run([sys.executable, "-m", "aromni", "train", cfg, f"out_dir={tmp}/one", *common])
    many, tn = run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={a.ranks}",
                    "-m", "aromni", "train", cfg, f"out_dir={tmp}/fsdp", "train.strategy=fsdp", *common])
    single = max(one.values())
    ranks = sorted(many.values(), reverse=True)[: a.ranks]
    goal = single / a.ranks * 1.15
    print(f"model: {P / 1e6:.0f}M parameters ({a.layers} x dim {a.dim} / ffn {a.ffn} / {a.heads} heads); "
          f"fp32 weights+grads+AdamW "
          f"= {16 * P / 2**30:.2f} GiB")
    print(f"one process: peak RSS {single / 2**30:.2f} GiB ({t1:.0f} s)")
    print(f"{a.ranks} ranks (FSDP2, gloo): peak RSS per rank "
          + ", ".join(f"{r / 2**30:.2f}" for r in ranks) + f" GiB ({tn:.0f} s)")
    print(f"max rank / one process = {ranks[0] / single:.3f} (goal <= {1.15 / a.ranks:.3f}: "
          f"{'met' if ranks[0] <= goal else 'missed'})")


if __name__ == "__main__":
    main()
