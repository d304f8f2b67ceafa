"""Checkpoint loading: detect the layout, map keys to aromni's, check shapes, assign without copies."""
from __future__ import annotations

import torch

from .errors import CheckpointError
from .model import ModelConfig, Transformer


def load_state_into(cfg: ModelConfig, state: dict, device="cpu", dtype=torch.float32,
                    source: str = "checkpoint") -> Transformer:
    """Build a model on the meta device and assign ``state`` (aromni key names), cast once to ``dtype``."""
    with torch.device("meta"):
        model = Transformer(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    bad = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
           for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or bad:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:5]}{' …' if len(missing) > 5 else ''} ({len(missing)})")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:5]}{' …' if len(unexpected) > 5 else ''} ({len(unexpected)})")
        if bad:
            parts.append(f"shape mismatches {bad[:3]}{' …' if len(bad) > 3 else ''} ({len(bad)})")
        raise CheckpointError(f"{source}: does not fit the model config: " + "; ".join(parts))
    model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state.items()}, assign=True)
    model.reset_rope()
    return model.eval()
