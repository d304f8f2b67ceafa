"""`aromni train --plan`: the state rows equal what a real AdamW step allocates; the verdict follows the
memory given; activations are within 25 % of the tensors autograd saves on the tiny model; the peak is within
15 % of the peak RSS that real CPU training steps reach."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from _train_data import lm_config, write_upstream_shards

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_state_rows_equal_a_real_adamw_step_and_activations_are_close():
    from aromni.core.model import build_model, get_config
    from aromni.core.train.plan import plan

    cfg = replace(get_config("tiny"), max_seq_len=256)
    m = build_model(cfg).train()
    B, T = 2, 256
    saved: dict[int, int] = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    tokens = torch.randint(0, cfg.vocab_size, (B, T), generator=torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = m(tokens)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten()).backward()
    opt = torch.optim.AdamW(m.parameters())
    opt.step()
    nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
    p = plan(cfg, batch=B, seq=T, bf16=False)
    assert p.rows["parameters (fp32 shards)"] == nbytes(m.parameters())
    assert p.rows["gradients (fp32 shards)"] == nbytes(q.grad for q in m.parameters())
    state = [v for s in opt.state.values() for k, v in s.items() if k != "step"]
    assert p.rows["optimizer state (AdamW, fp32)"] == nbytes(state)
    acts = p.rows["activations (without checkpointing)"] + B * T * cfg.vocab_size * 4  # + the fp32 logits
    assert abs(acts - sum(saved.values())) / sum(saved.values()) < 0.25, (acts, sum(saved.values()))


def test_plan_cli_verdict(tmp_path):
    cfg = lm_config(str(tmp_path), write_upstream_shards(str(tmp_path / "up"), n_files=1, per_file=2))
    cmd = [sys.executable, "-m", "aromni", "train", cfg, "--plan"]
    big = subprocess.run(cmd + ["--gpus", "2", "--gpu-memory", "80GB"], env=ENV, capture_output=True, text=True)
    assert big.returncode == 0, big.stderr
    assert "full (FSDP over 2)" in big.stdout and "lora (rank 16" in big.stdout and "does NOT fit" not in big.stdout
    small = subprocess.run(cmd + ["--gpu-memory", "1M"], env=ENV, capture_output=True, text=True)
    assert small.returncode == 0 and small.stdout.count("does NOT fit") == 2, small.stdout
    bad = subprocess.run(cmd + ["--gpu-memory", "lots"], env=ENV, capture_output=True, text=True)
    assert bad.returncode == 2 and "gpu memory" in bad.stderr


@pytest.mark.parametrize("checkpointing", [False, True])
def test_plan_peak_within_15_percent_of_measured_peak_rss(tmp_path, checkpointing):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    from bench_train_plan import measure

    # dim 256, 4 layers, batch 4 x 256 tokens: ~50 MB of parameters + AdamW, ~100 MB of activations
    r = measure(256, 4, 4, 704, 4, 256, checkpointing, tmp=str(tmp_path))
    assert r["measured"] > 50 * 2**20, r
    assert abs(r["plan"] - r["measured"]) / r["measured"] < 0.15, r
