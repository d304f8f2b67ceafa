"""Quantised linear layers, applied to a loaded model: ``quantize(model, "int8" | "int4")``.

- ``int8``: weights stored as int8 with one scale per output channel (symmetric). On CPU each call also
  quantises its activations per row (symmetric int8) and multiplies with ``torch._int_mm`` (int8 x int8 ->
  int32); on other devices the product is weight-only (``torch._weight_int8pack_mm`` where the device has it,
  else the weight is dequantised in the matmul). Kernels chosen by ``benchmarks/bench_quant.py`` and the
  bundled model's logits (docs/performance.md).
- ``int4``: CUDA only; weights in groups of ``group_size`` input columns, 4 bits with a scale and an offset per
  group, multiplied by ``torch._weight_int4pack_mm`` in bf16.

Embeddings and norms stay in the model's dtype. Linear layers smaller than ``min_size`` weights (CPU int8) or
whose shape the int4 kernel does not take are left as they are: on one CPU core the int8 kernels only win above
about 200k weights per layer.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import AromniError

QUANTS = ("none", "int8", "int4")
INT8_MIN_SIZE_CPU = 200_000  # weights per layer below which int8 is slower than fp32 on one CPU core (measured)
INT4_GROUP = 128
INT4_INNER_K_TILES = 8


def check_quant(name: str | None, device: torch.device | None = None) -> str | None:
    """``None``/``"none"`` -> None; ``"int8"``/``"int4"`` as is; anything else, or int4 on a ``device`` other
    than CUDA, raises AromniError."""
    if name in (None, "", "none"):
        return None
    if name not in QUANTS:
        raise AromniError(f"unknown quant {name!r} (none, int8, int4)")
    if name == "int4" and device is not None and device.type != "cuda":
        raise AromniError(f"quant int4 needs a CUDA device (the model would run on {device.type}); use int8")
    return name


def int8_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: (q [N, K] int8, scale [N] fp32) with ``w ~ q * scale[:, None]``."""
    wf = w.detach().float()
    scale = wf.abs().amax(1).clamp_min(1e-12) / 127
    q = torch.round(wf / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def int4_weight(w: torch.Tensor, group: int = INT4_GROUP) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric grouped 4-bit: (q [N, K] int32 in 0..15, scale [N, K/group], zero [N, K/group]) with
    ``w ~ (q - 8) * scale + zero`` per group (the layout of ``torch._weight_int4pack_mm``)."""
    N, K = w.shape
    wg = w.detach().float().reshape(N, K // group, group)
    lo, hi = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)
    scale = ((hi - lo) / 15).clamp_min(1e-8)
    q = torch.round((wg - lo) / scale).clamp_(0, 15).to(torch.int32).reshape(N, K)
    zero = lo + 8 * scale
    return q, scale.squeeze(-1), zero.squeeze(-1)


def linear_rows(layer: nn.Module, x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """``layer(x)[..., lo:hi]`` computing only those output channels (plain or quantised linear layers)."""
    rows = getattr(layer, "forward_rows", None)
    if rows is not None:
        return rows(x, lo, hi)
    weight = layer.weight
    assert isinstance(weight, torch.Tensor)
    return F.linear(x, weight[lo:hi])


class Int8Linear(nn.Module):
    """``y = x @ W.T`` with W in int8 and per-output-channel scales (no bias)."""

    q: torch.Tensor  # buffers
    scale: torch.Tensor

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        q, scale = int8_weight(weight)
        self.register_buffer("q", q.to(weight.device))
        self.register_buffer("scale", scale.to(weight.device))
        self.kernel = self._pick_kernel(weight.device, weight.dtype)

    def _pick_kernel(self, device: torch.device, dtype: torch.dtype) -> str:
        if device.type == "cpu":
            return "int_mm"
        try:
            x = torch.zeros(1, self.in_features, device=device, dtype=dtype)
            torch._weight_int8pack_mm(x, self.q, self.scale.to(dtype))
            return "int8pack"
        except (RuntimeError, NotImplementedError):
            return "dequant"

    def _matmul(self, x2: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        if self.kernel == "int_mm":  # activations quantised per row, symmetric, int8 x int8 -> int32
            xf = x2.float()
            xs = xf.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127
            return torch._int_mm(torch.round(xf / xs).to(torch.int8), q.t()) * (xs * scale)
        if self.kernel == "int8pack":
            return torch._weight_int8pack_mm(x2.contiguous(), q, scale.to(x2.dtype))
        return F.linear(x2, q.to(x2.dtype)) * scale.to(x2.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._matmul(x.reshape(-1, self.in_features), self.q, self.scale)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def forward_rows(self, x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """Output channels ``lo:hi`` only (an LM head restricted to one vocabulary span)."""
        y = self._matmul(x.reshape(-1, self.in_features), self.q[lo:hi], self.scale[lo:hi])
        return y.to(x.dtype).reshape(*x.shape[:-1], hi - lo)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel={self.kernel}"


class Int4Linear(nn.Module):
    """``y = x @ W.T`` with W in grouped 4 bits (bf16 compute; no bias). CUDA; the CPU kernel is used only
    when ``cpu_ok`` (tests of the packing)."""

    packed: torch.Tensor  # buffers
    scales_and_zeros: torch.Tensor

    def __init__(self, weight: torch.Tensor, group: int = INT4_GROUP, cpu_ok: bool = False):
        super().__init__()
        dev = weight.device
        if dev.type != "cuda" and not cpu_ok:
            raise AromniError(f"int4 weights need a CUDA device (this model is on {dev.type}); use int8")
        self.in_features, self.out_features, self.group = weight.shape[1], weight.shape[0], group
        q, scale, zero = int4_weight(weight, group)
        sz = torch.stack([scale.t(), zero.t()], dim=-1).to(torch.bfloat16).contiguous()  # [K/group, N, 2]
        if dev.type == "cuda":
            packed = torch._convert_weight_to_int4pack((q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8).to(dev),
                                                       INT4_INNER_K_TILES)
        else:
            packed = torch._convert_weight_to_int4pack_for_cpu(q, INT4_INNER_K_TILES)
        self.register_buffer("packed", packed)
        self.register_buffer("scales_and_zeros", sz.to(dev))

    @staticmethod
    def fits(weight: torch.Tensor, group: int = INT4_GROUP) -> bool:
        N, K = weight.shape
        return K % group == 0 and K % (INT4_INNER_K_TILES * 16) == 0 and N % 8 == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        if self.packed.device.type == "cuda":
            y = torch._weight_int4pack_mm(x2.to(torch.bfloat16).contiguous(), self.packed, self.group,
                                          self.scales_and_zeros)
        else:
            y = torch._weight_int4pack_mm_for_cpu(x2.float().contiguous(), self.packed, self.group,
                                                  self.scales_and_zeros.float())
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)

    def forward_rows(self, x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        # the packed tiles cannot be cut by rows: all channels are computed (cheap at 4 bits) and cut
        return self.forward(x)[..., lo:hi]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, group={self.group}"


def quantize(model: nn.Module, quant: str | None, min_size: int | None = None) -> nn.Module:
    """Replace ``model``'s bias-free ``nn.Linear`` layers in place by int8 or int4 ones; returns ``model``.

    ``min_size``: layers with fewer weights stay as they are (default: ``INT8_MIN_SIZE_CPU`` for int8 on CPU,
    else 0). Raises AromniError for int4 off CUDA.
    """
    linears = [(name, m) for name, m in model.named_modules() if type(m) is nn.Linear and m.bias is None]
    dev = linears[0][1].weight.device if linears else None
    quant = check_quant(quant, dev)
    if quant is None or dev is None:  # dev is None: no linear layers
        return model
    if min_size is None:
        min_size = INT8_MIN_SIZE_CPU if quant == "int8" and dev.type == "cpu" else 0
    for name, m in linears:
        w = m.weight
        if w.numel() < min_size or (quant == "int4" and not Int4Linear.fits(w)):
            continue
        new = Int8Linear(w) if quant == "int8" else Int4Linear(w)
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, new)
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and persistent buffers (quantised weights included)."""
    seen, n = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        n += t.numel() * t.element_size()
    return n


def param_count(model: nn.Module) -> int:
    """Parameters of ``model``, quantised weights counted as the weights they replace."""
    return sum(p.numel() for p in model.parameters()) + sum(
        m.in_features * m.out_features for m in model.modules() if isinstance(m, (Int8Linear, Int4Linear)))
