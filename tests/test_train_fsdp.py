"""The sharded trainer on gloo ranks (CPU): meta-device build + shard-by-shard load, DCP checkpoints (atomic,
resumable bitwise on the same world size, resharded onto fewer ranks), and the streamed export."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from _train_data import lm_config, write_codebook, write_upstream_shards

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]

SHARDED_LOAD = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from aromni.core.convert import meta_model
    from aromni.core.train.dist import shutdown
    from aromni.core.train.shard_load import fill_shards, local_rows, open_lazy

    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    out = {}
    for path in sys.argv[2:]:
        lazy = open_lazy(path)
        m = meta_model(lazy.cfg)
        for b in m.layers:
            fully_shard(b, mesh=mesh)
        fully_shard(m, mesh=mesh)
        m.to_empty(device="cpu")
        fill_shards(m, lazy, source=path)
        m.reset_rope()
        held = sum(local_rows(p)[0].numel() for p in m.parameters())
        total = sum(p.numel() for p in m.parameters())
        assert held <= total // dist.get_world_size() + 4096, (held, total)
        tokens = (torch.arange(24).view(2, 12) * 7) % lazy.cfg.vocab_size
        with torch.no_grad():
            out[path] = m.eval()(tokens)
    if dist.get_rank() == 0:
        torch.save(out, sys.argv[1])
    del m, b, mesh
    shutdown()
""")


def _exporters():
    try:
        from aromni.core.export import export_hf, export_meta
    except ImportError:
        from aromni.core.convert import export_hf, export_meta
    return export_hf, export_meta


@pytest.mark.slow
def test_meta_init_and_sharded_load_equal_a_plain_load(tmp_path, tiny_bundle):
    from aromni.core.loading import load_checkpoint

    export_hf, export_meta = _exporters()
    plain = load_checkpoint(tiny_bundle).model
    export_hf(plain, str(tmp_path / "hf"), fmt="hf")
    export_meta(plain, str(tmp_path / "meta2"), shards=2)
    paths = [tiny_bundle, str(tmp_path / "hf"), str(tmp_path / "meta2")]
    script = tmp_path / "load.py"
    script.write_text(SHARDED_LOAD)
    r = subprocess.run(TORCHRUN + ["--nproc_per_node=2", str(script), str(tmp_path / "out.pt"), *paths], env=ENV,
                       capture_output=True, text=True, timeout=300)
    # the outputs are written before the process group is left; a teardown abort after that is not a load result
    teardown_abort = "terminate called without an active exception" in r.stderr and (tmp_path / "out.pt").is_file()
    assert r.returncode == 0 or teardown_abort, r.stderr[-3000:]
    got = torch.load(tmp_path / "out.pt")
    tokens = (torch.arange(24).view(2, 12) * 7) % plain.cfg.vocab_size
    for p in paths:
        ref = load_checkpoint(p).model
        with torch.no_grad():
            want = ref.eval()(tokens)
        assert torch.equal(got[p], want), (p, (got[p] - want).abs().max())


# ----------------------------------------------------------------------------------------------
# The trainer through the CLI
# ----------------------------------------------------------------------------------------------
COMMON = ["optim.schedule=constant", "optim.warmup_steps=1", "loss.perceptual_weight=0.5",
          "loss.perceptual_tasks=null", "data.shuffle_buffer=6", "train.strategy=fsdp"]


def _train(cfg: str, out: str, ranks: int, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    args = ["aromni", "train", cfg, f"out_dir={out}", *COMMON, *extra, "-q"]
    cmd = [sys.executable, "-m", *args] if ranks == 1 else TORCHRUN + [f"--nproc_per_node={ranks}", "-m", *args]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    if check:
        teardown_abort = "terminate called without an active exception" in r.stderr
        assert r.returncode == 0 or teardown_abort, r.stderr[-3000:]
    return r


def _metrics(out: str) -> list[dict]:
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp_lm")
    data = write_upstream_shards(str(root / "up"), n_files=2, per_file=10)
    cb = write_codebook(str(root / "cb.npy"))
    return lm_config(str(root), data), f"loss.codebook={cb}"


@pytest.mark.slow
def test_sharded_checkpoints_resume_bitwise_and_reshard_onto_one_rank(tmp_path, lm):
    cfg, cb = lm
    fp32 = "train.precision=fp32"
    # uninterrupted: 2 ranks x 1 sequence x 2 micro-batches, 6 steps, streamed bundle at the end
    full = str(tmp_path / "full")
    _train(cfg, full, 2, cb, fp32, "data.batch_size=1", "optim.grad_accum=2", "train.max_steps=6",
           "checkpoint.every=3", "checkpoint.export_bundle=true")
    ref = _metrics(full)
    ck = os.path.join(full, "checkpoints", "step-00000006")
    assert os.path.isfile(os.path.join(ck, ".metadata")) and os.path.isfile(os.path.join(ck, "rank-00001.pt"))
    # paused at 3, resumed on the same 2 ranks: bitwise the same losses
    part = str(tmp_path / "part")
    _train(cfg, part, 2, cb, fp32, "data.batch_size=1", "optim.grad_accum=2", "train.max_steps=6",
           "train.stop_at=3", "checkpoint.every=3")
    _train(cfg, part, 2, cb, fp32, "data.batch_size=1", "optim.grad_accum=2", "train.max_steps=6",
           "checkpoint.every=3", "--resume")
    got = _metrics(part)
    assert [m["step"] for m in got] == list(range(1, 7))
    for a, b in zip(ref, got):
        assert (a["loss"], a["grad_norm"], a["tokens"]) == (b["loss"], b["grad_norm"], b["tokens"])
    # the 2-rank checkpoint at step 3 resumed on 1 rank with the same global batch (2 sequences): the same
    # samples, losses equal to fp32 summation-order tolerance
    one = str(tmp_path / "one")
    os.makedirs(os.path.join(one, "checkpoints"))
    os.rename(os.path.join(part, "checkpoints", "step-00000003"), os.path.join(one, "checkpoints", "step-00000003"))
    _train(cfg, one, 1, cb, fp32, "data.batch_size=2", "optim.grad_accum=2", "train.max_steps=6",
           "checkpoint.every=3", "--resume")
    resumed = _metrics(one)
    assert [m["step"] for m in resumed] == [4, 5, 6]
    for a, b in zip(ref[3:], resumed):
        assert a["tokens"] == b["tokens"]
        assert abs(a["loss"] - b["loss"]) < 1e-5 and abs(a["grad_norm"] - b["grad_norm"]) < 1e-4, (a, b)
    # streamed export (2 ranks, tensor by tensor) equals the weights of the final sharded checkpoint
    import torch.distributed.checkpoint as dcp

    from aromni.core.loading import load_checkpoint

    bundle = load_checkpoint(os.path.join(full, "bundle")).model.state_dict()
    state = {"model": {f"model.{k}": torch.empty_like(v) for k, v in bundle.items()}}
    dcp.load(state, storage_reader=dcp.FileSystemReader(ck), no_dist=True)
    for k, v in bundle.items():
        assert torch.equal(v, state["model"][f"model.{k}"]), k


def _kill_during_saves(cmd: list[str], root: str, delay: float) -> None:
    """Start ``cmd`` (torchrun), wait for a new checkpoint, sleep ``delay`` s, then SIGKILL every process."""
    import signal
    import time

    from aromni.core.train import checkpoint as C

    p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        before = C.latest_checkpoint(root)
        t0 = time.time()
        while C.latest_checkpoint(root) == before and p.poll() is None and time.time() - t0 < 120:
            time.sleep(0.05)
        time.sleep(delay)
    finally:
        # torchrun starts each worker in its own session: kill the workers (and torchrun) by pid, all at once
        pids = [p.pid] + _children(p.pid)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        p.wait()
        for pid in pids[1:]:
            while os.path.exists(f"/proc/{pid}") and _state(pid) not in ("Z", "X", ""):
                time.sleep(0.05)


def _children(pid: int) -> list[int]:
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


@pytest.mark.slow
def test_kill_9_during_sharded_saves_leaves_a_loadable_checkpoint(tmp_path, lm):
    from aromni.core.train import checkpoint as C

    cfg, cb = lm
    out = str(tmp_path / "run")
    root = os.path.join(out, "checkpoints")
    args = ["aromni", "train", cfg, f"out_dir={out}", *COMMON, cb, "data.batch_size=1", "train.max_steps=100000",
            "checkpoint.every=1", "checkpoint.keep=2", "-q"]
    for i, delay in enumerate((0.3, 0.7, 1.1)):
        _kill_during_saves(TORCHRUN + ["--nproc_per_node=2", "-m", *args] + (["--resume"] if i else []), root, delay)
        latest = C.latest_checkpoint(root)
        assert latest is not None and C.is_sharded(latest)
        assert {"trainer.pt", "rank-00000.pt", "rank-00001.pt", "config.yaml"} <= set(os.listdir(latest))
    # the newest complete checkpoint resumes (after a kill the next run also clears the partial leftovers)
    step = int(os.path.basename(C.latest_checkpoint(root)).split("-")[1])
    _train(cfg, out, 2, cb, "data.batch_size=1", f"train.max_steps={step + 1}", "checkpoint.every=1",
           "checkpoint.keep=2", "--resume")
    assert _metrics(out)[-1]["step"] == step + 1
    assert not [n for n in os.listdir(root) if n.startswith(C.TMP_PREFIX)]


@pytest.mark.slow
def test_async_save_and_resume_equal_sync_save_and_resume(tmp_path, lm):
    import torch.distributed.checkpoint as dcp

    cfg, cb = lm
    args = [cb, "train.precision=fp32", "data.batch_size=1", "train.max_steps=6", "checkpoint.every=2",
            "checkpoint.keep=5"]
    runs = {}
    for mode in ("false", "true"):
        out = str(tmp_path / f"async-{mode}")
        _train(cfg, out, 2, *args, f"checkpoint.async={mode}", "train.stop_at=4")
        _train(cfg, out, 2, *args, f"checkpoint.async={mode}", "--resume")
        runs[mode] = out
    sync, bg = (_metrics(runs[m]) for m in ("false", "true"))
    assert [m["step"] for m in bg] == list(range(1, 7))
    for a, b in zip(sync, bg):
        assert (a["loss"], a["grad_norm"], a["tokens"]) == (b["loss"], b["grad_norm"], b["tokens"])
    # every checkpoint (written in the background while later steps ran) equals the synchronous one bitwise
    for step in (2, 4, 6):
        states = []
        for mode in ("false", "true"):
            ck = os.path.join(runs[mode], "checkpoints", f"step-{step:08d}")
            meta = dcp.FileSystemReader(ck).read_metadata().state_dict_metadata
            state = {k: torch.empty(m.size, dtype=m.properties.dtype) for k, m in meta.items()
                     if hasattr(m, "size") and hasattr(m, "properties")}
            dcp.load(state, storage_reader=dcp.FileSystemReader(ck), no_dist=True)
            states.append(state)
        assert states[0].keys() == states[1].keys() and len(states[0]) > 10
        for k in states[0]:
            assert torch.equal(states[0][k], states[1][k]), (step, k)
    with open(os.path.join(runs["true"], "checkpoints", "latest")) as f:
        assert f.read().strip() == "step-00000006"
