"""Training throughput (tokens/s) and, on GPU, model FLOPs utilisation (MFU), through the real trainer.

    OMP_NUM_THREADS=2 python benchmarks/bench_train.py --config 100m --device cpu --steps 4 --batch 2 --seq 256
    python benchmarks/bench_train.py --config 1b --device cuda --steps 20 --batch 8 --seq 2048 [--ac] [--compile]
    torchrun --nproc_per_node 8 benchmarks/bench_train.py --config 1b --strategy fsdp --batch 8 --seq 2048

Synthetic full-length sequences are written as .npy shards, then ``aromni.core.train`` trains on them
(weighted NTP, AdamW, grad clipping; bf16 autocast on CUDA). Throughput is the median over the steps after
``--warmup``. MFU = tokens/s per device x FLOPs/token / peak, with FLOPs/token = 6 N + 12 L T d (N: matmul
parameters incl. the LM head, embeddings excluded; the attention term as in the PaLM appendix); peak: the
device's dense bf16 peak (H100/H200 SXM 989 TFLOP/s, A100 312) or ``--peak-tflops``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

from aromni.core.model import get_config
from aromni.core.train.config import from_dict
from aromni.core.train.data import Sample, ShardWriter
from aromni.core.train.stages import run

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "4090": 165.0}


def flops_per_token(cfg, seq: int) -> float:
    n = cfg.num_params(embeddings=False) + cfg.vocab_size * cfg.dim  # blocks + LM head (matmuls)
    return 6.0 * n + 12.0 * cfg.n_layers * seq * cfg.dim


def peak_flops(device: str, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if device.startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, tf in PEAK_BF16_TFLOPS.items():
            if key in name:
                return tf * 1e12
    return None


def write_data(root: str, n: int, seq: int, vocab: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    w = ShardWriter(root, shard_size=max(n, 1))
    for _ in range(n):
        w.add(Sample(rng.integers(16384 if vocab == 65536 else 16, vocab, size=seq), "text", 0))
    w.close()
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="100m")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=1, help="steps left out of the median (allocation, compile)")
    ap.add_argument("--batch", type=int, default=2, help="sequences per device per micro-batch")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--accum", type=int, default=1)
    ap.add_argument("--strategy", default="auto", help="auto | none | ddp | fsdp (under torchrun)")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--ac", action="store_true", help="activation checkpointing")
    ap.add_argument("--compile", action="store_true", help="torch.compile each block")
    ap.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: known GPUs)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    mc = get_config(a.config)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    tmp = tempfile.mkdtemp(prefix="bench_train_")
    data = os.path.join(tmp, "data")
    n_samples = a.batch * a.accum * world * (a.steps + 1)
    if rank == 0:
        write_data(data, n_samples, a.seq, mc.vocab_size)
    if world > 1:  # the others wait for the shards (no process group yet)
        while not os.path.isfile(os.path.join(data, "index.json")):
            time.sleep(0.1)
    cfg = from_dict({
        "kind": "lm", "out_dir": os.path.join(tmp, "run"),
        "model": {"config": a.config, "vocab": "ar-omni" if mc.vocab_size == 65536 else None,
                  "overrides": {"max_seq_len": max(a.seq, mc.max_seq_len)}, "activation_checkpointing": a.ac},
        "data": {"train": [{"type": "shards", "path": data}], "batch_size": a.batch, "shuffle_buffer": 0},
        "optim": {"lr": 1e-4, "warmup_steps": 0, "grad_accum": a.accum},
        "train": {"max_steps": a.steps, "device": a.device, "precision": a.precision, "strategy": a.strategy,
                  "compile": a.compile},
        "checkpoint": {"every": 0, "export_bundle": False},
    })
    if cfg.model.vocab is None:
        raise SystemExit(f"bench_train: config {a.config} needs a 65536 vocabulary (the AR-Omni layout)")
    recs: list[dict] = []

    def on_step(rec: dict) -> None:  # process CPU time too: wall time is unreliable on a shared machine
        rec["cpu_s"] = time.process_time()
        recs.append(rec)

    t_cpu = time.process_time()
    run(cfg, quiet=True, on_step=on_step)
    if rank != 0:
        return
    dev = "cuda" if torch.cuda.is_available() and not a.device.startswith("cpu") else "cpu"
    cpu = [r["cpu_s"] - (recs[i - 1]["cpu_s"] if i else t_cpu) for i, r in enumerate(recs)][a.warmup:] or [0.0]
    timed = recs[a.warmup:] or recs
    tps = statistics.median(r["tokens_per_s"] for r in timed)
    fpt = flops_per_token(mc, a.seq)
    peak = peak_flops(dev, a.peak_tflops)
    out = {"config": a.config, "params": mc.num_params(), "device": dev,
           "device_name": torch.cuda.get_device_name() if dev == "cuda" else "cpu",
           "threads": torch.get_num_threads(), "world": world, "batch": a.batch, "seq": a.seq, "accum": a.accum,
           "steps_timed": len(timed), "tokens_per_s": round(tps, 1),
           "step_s": round(statistics.median(r["tokens"] / r["tokens_per_s"] for r in timed), 3),
           "cpu_s_per_step": round(statistics.median(cpu), 3),
           "tokens_per_cpu_s": (round(timed[0]["tokens"] / max(statistics.median(cpu), 1e-9), 1)
                                if dev == "cpu" else None),
           "flops_per_token": fpt, "achieved_tflops_per_device": round(tps / world * fpt / 1e12, 3),
           "mfu": round(tps / world * fpt / peak, 4) if peak else None,
           "final_loss": round(recs[-1]["loss"], 4)}
    if a.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:>28}: {v}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
