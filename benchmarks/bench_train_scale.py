"""Peak RSS per rank of sharded training (FSDP2, gloo, CPU, fp32) vs one process holding the whole model.

A 7B-shaped model family (``--dim``, ``--ffn``, ``--heads``, ``--layers`` blocks, a small vocabulary) is trained for
two steps from a random init, checkpointed and exported (one process: the whole-model checkpoint and bundle;
FSDP: DCP shards and the streamed bundle). Every process records its RSS just before the model is built (after
imports, the process group and a warmed-up runtime: the fixed per-process baseline), its peak RSS at the end of
the last step (VmHWM, before the checkpoint) and its peak over the whole run (load, steps, checkpoint, export).

The goal: every rank's whole-run peak <= (1/N + 15 %) of the one-process model + optimizer footprint (its peak at
the end of the steps). Reported raw and with each process's baseline subtracted. ``--release`` turns
``train.release_memory`` on for every process (freed tensors leave the RSS at once).

    .venv/bin/python benchmarks/bench_train_scale.py --ranks 4 --layers 32 --dim 1024 --ffn 2816 --heads 16
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from _train_data import lm_config, write_upstream_shards  # noqa: E402

GiB = 2**30


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for ln in f:
            if ln.startswith(key + ":"):
                return int(ln.split()[1]) * 1024
    return 0


def child(cfg_path: str, extra: list[str]) -> None:
    """One process (or one rank under torchrun): baseline, step peak and whole-run peak into out_dir/mem-RANK.json."""
    import torch

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("gloo")
    from aromni.core.train.config import load_config
    from aromni.core.train.stages import run

    w = torch.nn.Linear(64, 64)  # warm the runtime: autograd, kernels, fused AdamW
    w(torch.randn(8, 64)).sum().backward()
    torch.optim.AdamW(w.parameters(), fused=True).step()
    del w
    cfg = load_config(cfg_path, extra)
    base = _status("VmRSS")
    seen = {}

    def on_step(rec: dict) -> None:
        if rec["step"] == cfg.train.max_steps:
            seen["step_peak"] = _status("VmHWM")

    run(cfg, quiet=True, on_step=on_step)
    out = {"base": base, "step_peak": seen["step_peak"], "peak": _status("VmHWM")}
    with open(os.path.join(cfg.out_dir, f"mem-{rank}.json"), "w") as f:
        json.dump(out, f)


def launch(cmd: list[str], out: str) -> tuple[list[dict], float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.time()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0 and "terminate called without an active exception" not in r.stderr:
        raise SystemExit(f"exit {r.returncode}: {r.stderr[-3000:]}")
    mem = []
    for fn in sorted(glob.glob(os.path.join(out, "mem-*.json"))):
        with open(fn) as f:
            mem.append(json.load(f))
    return mem, time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--ffn", type=int, default=2816)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--release", action="store_true", help="train.release_memory=true for every process")
    ap.add_argument("--child", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    if a.child:
        child(a.child[0], a.child[1:])
        return
    tmp = tempfile.mkdtemp(prefix="bench_train_scale-")
    data = write_upstream_shards(os.path.join(tmp, "up"), n_files=1, per_file=16)
    cfg = lm_config(tmp, data)
    common = ["model.config=7b", f"model.overrides={{n_layers: {a.layers}, dim: {a.dim}, intermediate_size: {a.ffn}, "
              f"n_heads: {a.heads}, n_kv_heads: {a.heads}, max_seq_len: 128}}", "train.max_steps=2",
              "checkpoint.every=2", "checkpoint.export_bundle=true", "train.precision=fp32", "data.batch_size=1"]
    from aromni.core.model import get_config
    from aromni.core.train.plan import n_params

    P = n_params(get_config("7b", n_layers=a.layers, dim=a.dim, intermediate_size=a.ffn, n_heads=a.heads,
                            n_kv_heads=a.heads, vocab_size=244))
    print(f"model: {P / 1e6:.0f}M parameters ({a.layers} x dim {a.dim} / ffn {a.ffn} / {a.heads} heads); "
          f"fp32 weights + grads + AdamW = {16 * P / GiB:.2f} GiB", flush=True)
    release = "train.release_memory=" + ("true" if a.release else "false")
    common.append(release)
    one, t1 = launch([sys.executable, __file__, "--child", cfg, f"out_dir={tmp}/one", *common], f"{tmp}/one")
    one = one[0]
    foot_raw, foot = one["step_peak"], one["step_peak"] - one["base"]
    print(f"one process: baseline {one['base'] / GiB:.2f} GiB, peak at the end of the steps {foot_raw / GiB:.2f} GiB "
          f"(model + optimizer footprint {foot / GiB:.2f} GiB above the baseline), whole run {one['peak'] / GiB:.2f} "
          f"GiB ({t1:.0f} s)", flush=True)
    many, tn = launch([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={a.ranks}",
                       __file__, "--child", cfg, f"out_dir={tmp}/fsdp", "train.strategy=fsdp", *common],
                      f"{tmp}/fsdp")
    worst_raw = max(m["peak"] for m in many)
    worst = max(m["peak"] - m["base"] for m in many)
    print(f"{a.ranks} ranks (FSDP2, gloo, {release}): whole-run peak per rank "
          + ", ".join(f"{m['peak'] / GiB:.2f}" for m in many) + " GiB; baselines "
          + ", ".join(f"{m['base'] / GiB:.2f}" for m in many) + " GiB; step peaks "
          + ", ".join(f"{(m['step_peak'] - m['base']) / GiB:.2f}" for m in many) + f" GiB above baseline ({tn:.0f} s)")
    goal = 1 / a.ranks * 1.15
    for name, r in (("raw", worst_raw / foot_raw), ("baseline subtracted", worst / foot)):
        print(f"{name}: worst rank / one-process footprint = {r:.3f} (goal <= {goal:.3f}: "
              f"{'met' if r <= goal else 'missed'})")


if __name__ == "__main__":
    main()
