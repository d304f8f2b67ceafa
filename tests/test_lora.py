"""LoRA adapters: exact start from the base, base frozen, merge equals the adapted model, and a LoRA run through
the CLI that saves the adapters alone and exports a merged plain bundle."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from _train_data import lm_config, write_upstream_shards
from aromni.core.errors import AromniError
from aromni.core.train import lora

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _tokens(V: int) -> torch.Tensor:
    return torch.randint(0, V, (2, 20), generator=torch.Generator().manual_seed(3))


def test_adapters_start_at_the_base_freeze_it_and_merge_exactly(tiny_bundle):
    from aromni.core.loading import load_checkpoint, load_state_into

    base = load_checkpoint(tiny_bundle).model
    model = load_checkpoint(tiny_bundle).model
    x = _tokens(base.cfg.vocab_size)
    with torch.no_grad():
        ref = base(x)
    n = lora.apply(model, {"rank": 4, "alpha": 8, "targets": ["wq", "wv", "w2"]})
    assert n == base.cfg.n_layers * 4 * (2 * base.cfg.dim + base.cfg.dim + base.cfg.n_kv_heads * base.cfg.head_dim
                                          + base.cfg.intermediate_size + base.cfg.dim)
    with torch.no_grad():
        assert torch.equal(model(x), ref)  # B = 0: the base exactly
    trainable = [k for k, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(k.endswith(("lora_a", "lora_b")) for k in trainable)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, lora.LoRALinear):
                m.lora_b.normal_(0, 0.05)
        adapted = model(x)
    merged = load_state_into(base.cfg, lora.merged_state(model))
    with torch.no_grad():
        got = merged(x)
    assert not torch.allclose(adapted, ref, atol=1e-3)
    assert (got - adapted).abs().max() <= 1e-5
    assert set(lora.adapter_state(model)) == {k for k in model.state_dict() if k.endswith(("lora_a", "lora_b"))}
    with pytest.raises(AromniError, match="train.lora.targets"):
        lora.check_spec({"targets": ["wx"]})


def test_lora_run_saves_adapters_alone_and_exports_a_merged_bundle(tmp_path, tiny_bundle):
    from aromni.core.loading import load_checkpoint

    cfg = lm_config(str(tmp_path), write_upstream_shards(str(tmp_path / "up"), n_files=1, per_file=8))
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "aromni", "train", cfg, f"out_dir={out}", "model.config=null",
                        "model.vocab=null", f"model.base={tiny_bundle}", "train.max_steps=3", "checkpoint.every=3",
                        "checkpoint.export_bundle=true", "train.precision=fp32", "optim.lr=1e-2",
                        "train.lora={rank: 4, alpha: 8, targets: [wq, wk, wv, wo, w1, w2, w3]}", "-q"],
                       env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    from safetensors.torch import load_file

    adapters = load_file(str(out / "adapter" / "adapter.safetensors"))
    assert adapters and all(k.endswith(("lora_a", "lora_b")) for k in adapters)
    ck = load_file(str(out / "checkpoints" / "step-00000003" / "model.safetensors"))
    assert set(ck) == set(adapters)
    base = load_checkpoint(tiny_bundle).model
    bundle = load_checkpoint(str(out / "bundle")).model
    bsd, msd = base.state_dict(), bundle.state_dict()
    for k in bsd:  # targets changed by the merge, everything else is the frozen base
        assert torch.equal(bsd[k], msd[k]) != k.endswith(tuple(f"{t}.weight" for t in lora.TARGETS)), k
    adapted = load_checkpoint(tiny_bundle).model
    lora.apply(adapted, {"rank": 4, "alpha": 8})
    adapted.load_state_dict(adapters, strict=False)
    x = _tokens(base.cfg.vocab_size)
    with torch.no_grad():
        assert (adapted(x) - bundle(x)).abs().max() <= 1e-5
