"""`aromni train --plan` against the measured peak RSS of real training steps (one process, CPU, fp32), and what
``train.release_memory`` (core/train/malloc.py) changes.

Each config trains four steps on sequences of exactly ``seq`` tokens. The measured footprint is the process's
peak RSS (VmHWM, read after the last step and before the checkpoint is written) minus its RSS just before the
model is built, after the runtime has been warmed up (one small forward, backward and fused AdamW step), so that
only what the plan counts is compared: parameters, gradients, AdamW state, activations and logits. Each config
runs with ``train.release_memory`` on and off, alternately (``--repeats`` pairs); step time is the mean of steps
2-4.

    .venv/bin/python benchmarks/bench_train_plan.py
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

GiB = 2**30
# name: (dim, layers, heads, ffn, batch, seq, activation checkpointing)
CONFIGS = {
    "parameter-heavy": (1024, 8, 16, 2816, 1, 128, False),
    "balanced": (512, 8, 8, 1408, 4, 256, False),
    "balanced, checkpointing": (512, 8, 8, 1408, 4, 256, True),
    "activation-heavy": (256, 4, 4, 704, 8, 512, False),
}


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for ln in f:
            if ln.startswith(key + ":"):
                return int(ln.split()[1]) * 1024
    return 0


def write_data(path: str, n: int, seq: int, seed: int = 0) -> str:
    """AR-Omni pretraining lines (text_to_text) of exactly ``seq`` tokens."""
    import random

    from _train_data import layout

    lay, rng = layout(), random.Random(seed)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "part-000.jsonl"), "w") as f:
        for i in range(n):
            resp = [rng.randrange(lay.text_start, lay.text_end) for _ in range(seq - 4)]
            code = [lay.bos, rng.randrange(lay.text_start, lay.text_end)] + resp + [lay.eos]
            code = code[:seq - 1] + [lay.eos]
            f.write(json.dumps({"id": str(i), "discrete_code": code, "task": "text_to_text", "response": resp}) + "\n")
    return path


def overrides(dim: int, layers: int, heads: int, ffn: int, batch: int, seq: int, ckpt: bool) -> list[str]:
    return [f"model.activation_checkpointing={str(ckpt).lower()}",
            f"model.overrides={{dim: {dim}, n_layers: {layers}, n_heads: {heads}, n_kv_heads: {heads}, "
            f"intermediate_size: {ffn}, max_seq_len: {seq}}}", f"data.batch_size={batch}", f"data.seq_len={seq}",
            "data.shuffle_buffer=0", "train.max_steps=4", "checkpoint.every=0", "train.precision=fp32",
            "train.device=cpu", "train.strategy=none", "optim.grad_accum=1"]


def child(cfg_path: str, extra: list[str]) -> dict:
    """Runs in a fresh process: baseline RSS, two training steps, peak RSS; and the plan of the same config."""
    import torch

    from aromni.core.train.config import load_config
    from aromni.core.train.loop import Trainer
    from aromni.core.train.plan import plan
    from aromni.core.train.resolve import build_omni

    w = torch.nn.Linear(64, 64)  # warm the runtime: autograd, kernels, fused AdamW
    torch.optim.AdamW(w.parameters(), fused=True)
    w(torch.randn(8, 64)).sum().backward()
    torch.optim.AdamW(w.parameters(), fused=True).step()
    del w
    cfg = load_config(cfg_path, extra)
    base = _status("VmRSS")
    omni = build_omni(cfg)
    seen: dict = {"t": []}

    def on_step(rec: dict) -> None:
        seen["t"].append(time.perf_counter())
        if rec["step"] == cfg.train.max_steps:
            seen["peak"] = _status("VmHWM")

    t = Trainer(cfg, omni, quiet=True, on_step=on_step)
    mc = t.model.cfg
    t.fit()
    p = plan(mc, batch=cfg.data.batch_size, seq=t.seq_len, gpus=1, bf16=False,
             checkpointing=cfg.model.activation_checkpointing, grad_accum=cfg.optim.grad_accum)
    step_s = (seen["t"][-1] - seen["t"][0]) / (len(seen["t"]) - 1)
    return {"measured": seen["peak"] - base, "plan": p.total, "rows": p.rows, "step_s": step_s,
            "params": sum(q.numel() for q in t.model.parameters())}


def measure(dim: int, layers: int, heads: int, ffn: int, batch: int, seq: int, ckpt: bool, tmp: str,
            release: bool = True) -> dict:
    """Plan vs measurement of one config (a fresh process)."""
    from _train_data import lm_config

    data = write_data(os.path.join(tmp, f"data-{seq}"), n=4 * batch, seq=seq)
    cfg = lm_config(tmp, data)
    extra = overrides(dim, layers, heads, ffn, batch, seq, ckpt) + [
        f"out_dir={tmp}/run-{dim}-{layers}-{batch}-{seq}-{int(ckpt)}-{int(release)}-{time.time_ns()}",
        f"train.release_memory={str(release).lower()}"]
    r = subprocess.run([sys.executable, __file__, "--child", cfg, *extra], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=1800)
    if r.returncode != 0:
        raise SystemExit(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=1, help="on/off pairs per config")
    ap.add_argument("--child", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], a.child[1:])))
        return
    tmp = tempfile.mkdtemp(prefix="bench_train_plan-")
    print("| config | parameters | batch x seq | plan | measured (release on) | plan / measured | "
          "measured (release off) | step time on / off |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, shape in CONFIGS.items():
        on, off = [], []
        for _ in range(a.repeats):  # interleaved pairs
            on.append(measure(*shape, tmp=tmp, release=True))
            off.append(measure(*shape, tmp=tmp, release=False))
        m_on = max(r["measured"] for r in on)
        m_off = max(r["measured"] for r in off)
        ratio = sum(x["step_s"] / y["step_s"] for x, y in zip(on, off)) / len(on)
        r = on[0]
        print(f"| {name}: dim {shape[0]}, {shape[1]} layers | {r['params'] / 1e6:.1f}M | {shape[4]} x {shape[5]} | "
              f"{r['plan'] / GiB:.3f} GiB | {m_on / GiB:.3f} GiB | {r['plan'] / m_on:.3f} | {m_off / GiB:.3f} GiB | "
              f"{ratio:.2f} |", flush=True)


if __name__ == "__main__":
    main()
