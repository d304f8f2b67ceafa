"""Resampling: soxr (the project's own codecs) or a windowed-sinc resampler equal to torchaudio's ``Resample``.

The reference WavTokenizer front end (``convert_audio``) resamples with ``torchaudio.transforms.Resample`` at its
defaults, and AR-Omni's released models learned from codes of audio resampled that way. torchaudio cannot be
installed beside every torch, so ``sinc_resample`` reproduces it in plain torch, operation for operation, so that
outputs are equal bit for bit (see docs/tokenizers.md):

- rates reduced by their gcd to ``orig`` -> ``new``; cutoff ``base = min(orig, new) * rolloff``;
- a bank of ``new`` FIR filters with ``2 * width + orig`` taps, ``width = ceil(lowpass_filter_width * orig / base)``;
  filter ``j`` tap ``k`` at ``t = (k - width) / orig - j / new`` is ``sinc(pi * base * t) * hann * base / orig``
  with ``base * t`` clamped to ``±lowpass_filter_width`` and ``hann = cos(pi * base * t / (2 * width_zc))**2``;
- the signal zero-padded by ``width`` before and ``width + orig`` after, convolved with stride ``orig`` (one output
  per filter per step), interleaved, and cut to ``ceil(new * length / orig)`` samples.

``kernel_dtype`` float64 is ``Resample``'s default (kernel computed in float64, stored as float32); float32 is
what ``torchaudio.functional.resample`` does for float32 input.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

RESAMPLERS = ("soxr", "sinc")


def reduced_rates(orig_freq: int, new_freq: int) -> tuple[int, int]:
    """Both rates divided by their greatest common divisor."""
    g = math.gcd(int(orig_freq), int(new_freq))
    return int(orig_freq) // g, int(new_freq) // g


def output_length(length: int, orig_freq: int, new_freq: int) -> int:
    """Samples out for ``length`` in: ``ceil(new * length / orig)`` (reduced rates, float division, as torchaudio)."""
    orig, new = reduced_rates(orig_freq, new_freq)
    return math.ceil(new * length / orig)


def sinc_kernel(orig_freq: int, new_freq: int, lowpass_filter_width: int = 6, rolloff: float = 0.99,
                kernel_dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, int]:
    """(filter bank [new, 1, 2 * width + orig] float32, width) for the reduced rates of ``orig_freq -> new_freq``."""
    if lowpass_filter_width <= 0:
        raise ValueError("lowpass_filter_width must be positive")
    orig, new = reduced_rates(orig_freq, new_freq)
    base = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base)
    # Each step below matches torchaudio's dtype and operation order, so the float32 bank is bit-identical:
    # the tap offsets are (k / orig) in kernel_dtype; the phase offsets (-j / new) come from an integer arange
    # divided in float32 (torch's default dtype) when the kernel is built in float64, in float32 otherwise.
    taps = torch.arange(-width, width + orig, dtype=kernel_dtype)[None, None] / orig
    phase_src = torch.arange(0, -new, -1, dtype=None if kernel_dtype == torch.float64 else kernel_dtype)
    t = phase_src[:, None, None] / new + taps
    t *= base
    t = t.clamp_(-lowpass_filter_width, lowpass_filter_width)
    hann = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t *= math.pi
    sinc = torch.where(t == 0, torch.tensor(1.0).to(t), t.sin() / t)
    sinc *= hann * (base / orig)
    return sinc.to(torch.float32) if kernel_dtype == torch.float64 else sinc, width


def sinc_resample(wav: torch.Tensor | np.ndarray, orig_freq: int, new_freq: int, lowpass_filter_width: int = 6,
                  rolloff: float = 0.99, kernel_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """[..., T] float -> [..., ceil(new * T / orig)] on the same device, as torchaudio's ``Resample``."""
    x = torch.as_tensor(wav)
    if not x.is_floating_point():
        raise TypeError(f"sinc_resample needs floating-point samples, got {x.dtype}")
    if int(orig_freq) <= 0 or int(new_freq) <= 0:
        raise ValueError("sample rates must be positive")
    if int(orig_freq) == int(new_freq):
        return x
    orig, new = reduced_rates(orig_freq, new_freq)
    kernel, width = sinc_kernel(orig_freq, new_freq, lowpass_filter_width, rolloff, kernel_dtype)
    shape = x.shape
    flat = x.reshape(-1, shape[-1])
    padded = F.pad(flat, (width, width + orig))
    y = F.conv1d(padded[:, None], kernel.to(device=x.device, dtype=x.dtype), stride=orig)  # [N, new, steps]
    y = y.transpose(1, 2).reshape(flat.shape[0], -1)[:, : output_length(shape[-1], orig, new)]
    return y.reshape(*shape[:-1], y.shape[-1])


def resample(wav: np.ndarray, orig_freq: int, new_freq: int, method: str = "soxr") -> np.ndarray:
    """Mono float32 numpy samples from ``orig_freq`` to ``new_freq`` by ``method`` ("soxr" HQ or "sinc")."""
    if method not in RESAMPLERS:
        raise ValueError(f"unknown resampler {method!r} ({', '.join(RESAMPLERS)})")
    wav = np.asarray(wav, dtype=np.float32)
    if int(orig_freq) == int(new_freq):
        return wav
    if method == "sinc":
        with torch.inference_mode():
            return sinc_resample(torch.from_numpy(np.ascontiguousarray(wav)), orig_freq, new_freq).numpy()
    import soxr

    return soxr.resample(wav, orig_freq, new_freq, quality="HQ").astype(np.float32)
