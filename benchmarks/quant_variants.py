"""int8 variants of a model for ``bench_quant.py --agreement``: ``build(name, model)`` quantises ``model`` in place.

- ``int8``: ``core.quant.quantize(model, "int8")``, what ``--quant int8`` does on CPU (per-channel int8 weights,
  per-row int8 activations, ``torch._int_mm``; layers under 200k weights stay fp32: the FFN and the LM head of the
  bundled model);
- ``int8-head``: only the LM head so; ``int8-no-w2``: the FFN down projection ``w2`` stays fp32;
- ``act2``: activations quantised twice per row (int8 value + int8 residual, ~15 bits), both in one
  ``torch._int_mm`` of 2M rows;
- ``weight-only``: per-channel int8 weights, fp32 activations (dequantised in the matmul);
- ``weight-only-g32``: the same with one scale per 32 input columns;
- ``mse-clip``: per-channel scales clipped to the ratio (0.70-1.00 of the row maximum) with the least squared
  weight error, then as ``int8``;
- ``smooth-w2``: SmoothQuant (alpha 0.5) on the input of ``w2``, from the per-channel maxima of a forward pass
  over random tokens; folded into ``w3``'s rows and ``w2``'s columns (no cost per call), then as ``int8``;
- ``w16a16``: two int8 planes per weight (value + residual, 2 bytes a weight) and ``act2`` activations;
- ``bf16-weights``: a reference, not a quantisation: every linear weight rounded to bf16 (8-bit mantissa),
  computed in fp32.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from aromni.core.quant import INT8_MIN_SIZE_CPU, Int8Linear, int8_weight, quantize


def _act2(x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    xf = x2.float()
    s1 = xf.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127
    q1 = torch.round(xf / s1)
    r = xf - q1 * s1
    s2 = r.abs().amax(1, keepdim=True).clamp_min(1e-30) / 127
    return torch.cat([q1, torch.round(r / s2)]).to(torch.int8), s1, s2


class Act2Linear(Int8Linear):
    """Per-channel int8 weights; activations as an int8 value plus an int8 residual per row."""

    def _matmul(self, x2: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        m = x2.shape[0]
        xq, s1, s2 = _act2(x2)
        r = torch._int_mm(xq, q.t()).float()
        return (r[:m] * s1 + r[m:] * s2) * scale


class W16A16Linear(Int8Linear):
    """Two int8 weight planes (value + residual, each with per-channel scales) and ``Act2Linear``'s activations."""

    def __init__(self, weight: torch.Tensor):
        super().__init__(weight)
        q2, s2 = int8_weight(weight.detach().float() - self.q.float() * self.scale[:, None])
        self.register_buffer("q2", q2)
        self.register_buffer("scale2", s2)

    def _two(self, x2: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        m, n = x2.shape[0], hi - lo
        xq, a1, a2 = _act2(x2)
        r = torch._int_mm(xq, torch.cat([self.q[lo:hi], self.q2[lo:hi]]).t()).float()
        xr = r[:m] * a1 + r[m:] * a2
        return xr[:, :n] * self.scale[lo:hi] + xr[:, n:] * self.scale2[lo:hi]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._two(x.reshape(-1, self.in_features), 0, self.out_features)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def forward_rows(self, x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        return self._two(x.reshape(-1, self.in_features), lo, hi).to(x.dtype).reshape(*x.shape[:-1], hi - lo)


class GroupWeightOnly(nn.Module):
    """int8 weights with one scale per ``group`` input columns, dequantised at each call (fp32 activations)."""

    def __init__(self, weight: torch.Tensor, group: int = 32):
        super().__init__()
        n, k = weight.shape
        self.in_features, self.out_features = k, n
        wg = weight.detach().float().reshape(n, k // group, group)
        s = wg.abs().amax(-1, keepdim=True).clamp_min(1e-12) / 127
        self.register_buffer("q", torch.round(wg / s).clamp(-127, 127).to(torch.int8))
        self.register_buffer("s", s)

    def _w(self) -> torch.Tensor:
        return (self.q.float() * self.s).reshape(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self._w().t()

    def forward_rows(self, x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        return x @ self._w()[lo:hi].t()


def _replace(model: nn.Module, make: Callable[[str, torch.Tensor], nn.Module | None]) -> nn.Module:
    """Replace each bias-free linear layer of at least INT8_MIN_SIZE_CPU weights by ``make(name, weight)``
    (None: keep it)."""
    for name, m in list(model.named_modules()):
        if type(m) is nn.Linear and m.bias is None and m.weight.numel() >= INT8_MIN_SIZE_CPU:
            new = make(name, m.weight)
            if new is not None:
                parent, _, attr = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, attr, new)
    return model


def _mse_clip(weight: torch.Tensor) -> Int8Linear:
    lin = Int8Linear(weight)
    w = weight.detach().float()
    amax = w.abs().amax(1).clamp_min(1e-12)
    best_err = torch.full_like(amax, float("inf"))
    for r in torch.linspace(0.70, 1.00, 31):
        s = amax * r / 127
        q = torch.round(w / s[:, None]).clamp(-127, 127)
        err = ((q * s[:, None] - w) ** 2).sum(1)
        better = err < best_err
        lin.q[better] = q[better].to(torch.int8)
        lin.scale[better] = s[better]
        best_err = torch.minimum(err, best_err)
    return lin


def _smooth_w2(model: nn.Module, alpha: float = 0.5, tokens: int = 256) -> nn.Module:
    amax: dict[str, torch.Tensor] = {}

    def hook(name):
        def f(mod, inp, out):
            a = inp[0].detach().reshape(-1, inp[0].shape[-1]).abs().amax(0)
            amax[name] = torch.maximum(amax[name], a) if name in amax else a
        return f
    ffns = [(n, m) for n, m in model.named_modules() if hasattr(m, "w2") and hasattr(m, "w3")]
    hooks = [m.w2.register_forward_hook(hook(n)) for n, m in ffns]
    ids = torch.randint(0, model.cfg.vocab_size, (4, tokens // 4), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        model(ids)
    for h in hooks:
        h.remove()
    with torch.no_grad():
        for n, m in ffns:
            wmax = m.w2.weight.abs().amax(0).clamp_min(1e-8)
            s = (amax[n].clamp_min(1e-5) ** alpha / wmax ** (1 - alpha)).clamp_min(1e-5)
            m.w3.weight.div_(s[:, None])
            m.w2.weight.mul_(s[None, :])
    return quantize(model, "int8")


def _bf16_weights(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if type(m) is nn.Linear:
                m.weight.copy_(m.weight.bfloat16().float())
    return model


def _dequant(weight: torch.Tensor) -> Int8Linear:
    lin = Int8Linear(weight)
    lin.kernel = "dequant"
    return lin


VARIANTS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "int8": lambda m: quantize(m, "int8"),
    "int8-head": lambda m: _replace(m, lambda n, w: Int8Linear(w) if n == "output" else None),
    "int8-no-w2": lambda m: _replace(m, lambda n, w: None if n.endswith(".w2") else Int8Linear(w)),
    "act2": lambda m: _replace(m, lambda n, w: Act2Linear(w)),
    "weight-only": lambda m: _replace(m, lambda n, w: _dequant(w)),
    "weight-only-g32": lambda m: _replace(m, lambda n, w: GroupWeightOnly(w, 32)),
    "mse-clip": lambda m: _replace(m, lambda n, w: _mse_clip(w)),
    "smooth-w2": _smooth_w2,
    "w16a16": lambda m: _replace(m, lambda n, w: W16A16Linear(w)),
    "bf16-weights": _bf16_weights,
}


def build(name: str, model: nn.Module) -> nn.Module:
    """``model`` with variant ``name`` applied (in place)."""
    if name not in VARIANTS:
        raise SystemExit(f"unknown variant {name!r} (known: {', '.join(VARIANTS)})")
    return VARIANTS[name](model)
