"""kill -9 during sharded (DCP) checkpoint saves, N times at random moments; every time the next run must resume
from the previous complete checkpoint.

A tiny model on 2 gloo ranks saves every step (``checkpoint.every=1``). Each round starts the run (with
``--resume`` after the first), waits until its 1st, 2nd or 3rd save (at random) is in progress (its ``.tmp-step-*``
directory exists), sleeps a random fraction of a typical save, and SIGKILLs torchrun and both workers at once. A
round counts only when the kill left the save unfinished (the temporary directory is still there); otherwise it is
repeated. After each counted kill: the checkpoint named by ``latest`` must be complete (every file present, every
tensor readable) and be the one before the interrupted save; the next round's run must log that it resumed from
exactly that checkpoint. A last run resumes and finishes. ``--async`` does the same with ``checkpoint.async:
true``.

    .venv/bin/python benchmarks/bench_kill_resume.py --kills 15 [--async]
"""
from __future__ import annotations

import argparse
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from _train_data import lm_config, write_codebook, write_upstream_shards  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def _kill_all(p: subprocess.Popen) -> None:
    """SIGKILL torchrun and its workers (each in its own session) together, by pid; reap them."""
    pids = [p.pid] + _children(p.pid)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    p.wait()
    for pid in pids[1:]:
        while os.path.exists(f"/proc/{pid}"):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                        break
            except OSError:
                break
            time.sleep(0.01)


def _saving(root: str, since: float = 0.0) -> str | None:
    """The newest save in progress (a temporary directory created after ``since``), if any."""
    try:
        names = sorted(n for n in os.listdir(root) if n.startswith(".tmp-step-"))
        return next((n for n in reversed(names) if os.stat(os.path.join(root, n)).st_ctime >= since), None)
    except OSError:
        return None


def _check_complete(ckpt: str) -> None:
    """Every file of a 2-rank sharded checkpoint present, and every tensor and rank file readable."""
    import torch
    import torch.distributed.checkpoint as dcp

    from aromni.core.train import checkpoint as C

    for name in ("trainer.pt", "rank-00000.pt", "rank-00001.pt", "config.yaml", ".metadata"):
        assert os.path.isfile(os.path.join(ckpt, name)), f"{ckpt}: {name} missing"
        if name.endswith(".pt"):
            C.read_file(ckpt, name)
    meta = dcp.FileSystemReader(ckpt).read_metadata().state_dict_metadata
    state = {k: torch.empty(m.size, dtype=m.properties.dtype) for k, m in meta.items() if hasattr(m, "properties")}
    dcp.load(state, storage_reader=dcp.FileSystemReader(ckpt), no_dist=True)
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=15)
    ap.add_argument("--async", dest="async_", action="store_true", help="checkpoint.async: true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-time", type=float, default=0.15,
                    help="the kill lands uniformly in [0, this] seconds after a save starts")
    a = ap.parse_args()
    from aromni.core.train import checkpoint as C

    rng = random.Random(a.seed)
    tmp = tempfile.mkdtemp(prefix="bench_kill_resume-")
    data = write_upstream_shards(os.path.join(tmp, "up"), n_files=2, per_file=10)
    cfg = lm_config(tmp, data)
    out = os.path.join(tmp, "run")
    root = os.path.join(out, "checkpoints")
    args = ["-m", "aromni", "train", cfg, f"out_dir={out}", "train.strategy=fsdp", "train.precision=fp32",
            f"loss.codebook={write_codebook(os.path.join(tmp, 'cb.npy'))}", "loss.perceptual_weight=0.5",
            "loss.perceptual_tasks=null", "data.batch_size=1", "checkpoint.every=1", "checkpoint.keep=2",
            f"checkpoint.async={'true' if a.async_ else 'false'}"]
    ok = attempts = 0
    expect: str | None = None  # the checkpoint the next run must resume from
    t_start = time.time()
    while ok < a.kills and attempts < 4 * a.kills:
        attempts += 1
        log = os.path.join(tmp, f"round-{attempts}.log")
        with open(log, "w") as err:
            launched = time.time()
            p = subprocess.Popen(TORCHRUN + args + ["train.max_steps=100000"] + (["--resume"] if expect else []),
                                 env=ENV, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
            try:
                # wait for this run's k-th save (k random in 1..3; not a leftover of the last kill), with a
                # complete checkpoint before it
                k, seen = rng.randint(1, 3), set()
                deadline = launched + 300
                while time.time() < deadline and p.poll() is None and len(seen) < k:
                    s = _saving(root, launched)
                    if s and C.latest_checkpoint(root) is not None:
                        seen.add(s)
                    time.sleep(0.002)
                delay = rng.uniform(0.0, a.save_time)
                time.sleep(delay)
                crashed = p.poll()
            finally:
                _kill_all(p)
        with open(log) as f:
            text = f.read()
        if crashed is not None:
            raise SystemExit(f"round {attempts}: the run exited by itself ({crashed}): {text[-3000:]}")
        if expect is not None:
            m = re.search(r"resumed from (\S+) at step (\d+)", text)
            assert m and os.path.abspath(m.group(1)) == os.path.abspath(expect), \
                f"round {attempts}: expected a resume from {expect}, log says {m.group(0) if m else text[-2000:]}"
        left = _saving(root, launched)
        latest = C.latest_checkpoint(root)
        if left is None:  # the kill fell between saves: not counted, resume from the same state next time
            expect = latest
            print(f"attempt {attempts}: kill {delay * 1000:.0f} ms after a save began fell after it; repeated")
            continue
        interrupted = int(left.split("-")[-1])
        _check_complete(latest)
        step = int(os.path.basename(latest).split("-")[1])
        assert step == interrupted - 1, (latest, left)
        ok += 1
        expect = latest
        print(f"kill {ok}: {delay * 1000:.0f} ms into the save of step {interrupted}; latest = step {step}, "
              "complete", flush=True)
    final = subprocess.run(TORCHRUN + args + [f"train.max_steps={step + 2}", "--resume"],
                           env=ENV, capture_output=True, text=True, timeout=600)
    m = re.search(r"resumed from (\S+) at step (\d+)", final.stderr)
    assert final.returncode == 0 and m and os.path.abspath(m.group(1)) == os.path.abspath(expect), final.stderr[-3000:]
    print(f"{ok}/{a.kills} kills mid-save resumed from the previous complete checkpoint "
          f"({attempts} attempts, {'async' if a.async_ else 'sync'} saves, {time.time() - t_start:.0f} s); "
          f"the last resume ran to step {step + 2} and exited 0")


if __name__ == "__main__":
    main()
