"""LoRA adapters on aromni's own ``nn.Linear`` projections (wq, wk, wv, wo, w1, w2, w3).

A target layer keeps its frozen ``weight`` under its usual key (so checkpoints and key maps are unchanged) and
gains ``lora_a`` [r, in] and ``lora_b`` [out, r]: ``y = x W^T + (alpha / r) * dropout(x) A^T B^T``. B starts at
zero, so training starts from the base model exactly. :func:`merge` folds the adapters into the weights.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import AromniError

TARGETS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
ADAPTER_KEYS = ("lora_a", "lora_b")


class LoRALinear(nn.Linear):
    """An ``nn.Linear`` (bias-free, frozen) plus a low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float, generator=None):
        super().__init__(base.in_features, base.out_features, bias=False, device="meta")
        self.weight = base.weight
        self.weight.requires_grad_(False)
        self.rank, self.scale = rank, alpha / rank
        dev = base.weight.device
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=dev))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=dev))
        with torch.no_grad():  # nn.Linear's default (kaiming-uniform) init for A
            bound = 1 / math.sqrt(base.in_features)
            self.lora_a.copy_(torch.empty(self.lora_a.shape).uniform_(-bound, bound, generator=generator))
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight)
        return y + F.linear(F.linear(self.drop(x), self.lora_a.to(x.dtype)), self.lora_b.to(x.dtype)) * self.scale

    def merged_weight(self) -> torch.Tensor:
        return self.weight + (self.lora_b.float() @ self.lora_a.float()).to(self.weight.dtype) * self.scale


def check_spec(spec: dict) -> dict:
    """``train.lora`` with defaults filled in: {rank: 16, alpha: 32, dropout: 0.0, targets: all seven}."""
    out: dict[str, Any] = {"rank": 16, "alpha": 32.0, "dropout": 0.0, "targets": list(TARGETS)}
    unknown = set(spec) - set(out)
    if unknown:
        raise AromniError(f"config: train.lora: unknown key(s) {sorted(unknown)} (known: {', '.join(out)})")
    out.update(spec)
    if not isinstance(out["rank"], int) or out["rank"] < 1:
        raise AromniError(f"config: train.lora.rank must be an integer >= 1 (got {out['rank']!r})")
    if not 0 <= float(out["dropout"]) < 1:
        raise AromniError(f"config: train.lora.dropout must be in [0, 1) (got {out['dropout']!r})")
    bad = [t for t in out["targets"] if t not in TARGETS]
    if bad or not out["targets"]:
        raise AromniError(f"config: train.lora.targets: {bad or 'empty'} (choose from {', '.join(TARGETS)})")
    out["alpha"], out["dropout"] = float(out["alpha"]), float(out["dropout"])
    return out


def apply(model: nn.Module, spec: dict, seed: int = 0) -> int:
    """Freeze ``model`` and replace its target projections by :class:`LoRALinear`; returns adapter parameters."""
    spec = check_spec(spec)
    model.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    n = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if name in spec["targets"] and type(child) is nn.Linear:
                lora = LoRALinear(child, spec["rank"], spec["alpha"], spec["dropout"], generator=g)
                setattr(parent, name, lora)
                n += lora.lora_a.numel() + lora.lora_b.numel()
    if not n:
        raise AromniError("config: train.lora.targets matched no layer of the model")
    return n


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapters (MBs), keyed as in ``model.state_dict()``."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if k.rsplit(".", 1)[-1] in ADAPTER_KEYS}


def merged_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The plain model's state dict with every adapter folded into its weight."""
    merged = {}
    for name, m in model.named_modules():
        if isinstance(m, LoRALinear):
            merged[f"{name}.weight"] = m.merged_weight().detach()
    return {k: merged.get(k, v).detach() for k, v in model.state_dict().items()
            if k.rsplit(".", 1)[-1] not in ADAPTER_KEYS}
