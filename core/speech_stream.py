"""Chunked (streaming) decoding of speech codes.

WavTokenizer's decoder is not causal: its pos_net GroupNorms and attention span every frame, its convolutions
see ±39 frames and the ISTFT ±2. So audio for frames [a, b) is decoded from a *window* of codes
[a - left, b + right) and the part for [a, b) is released; the first ``xfade`` frames of each release are
cross-faded with the previous window's prediction of the same samples. Released audio is final.

Latency: the first audio needs ``first + right`` codes; after that, every ``chunk`` codes release
``chunk * hop`` samples. The result approximates a whole-sequence decode (exact equality is impossible:
the window's normalisation statistics and attention differ); benchmarks/bench_stream_decode.py measures it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch


@dataclass(frozen=True)
class StreamConfig:
    """Window geometry, in codes (frames)."""

    first: int = 12  # frames released by the first window
    chunk: int = 10  # frames released by each later window
    left: int = 120  # past frames kept as context (3 s at 40 codes/s: the reference's training crops)
    right: int = 8  # look-ahead frames a window needs beyond what it releases
    xfade: int = 4  # frames cross-faded with the previous window (<= right)

    def __post_init__(self):
        if min(self.first, self.chunk) < 1 or min(self.left, self.right, self.xfade) < 0:
            raise ValueError(f"bad stream geometry {self}")
        if self.xfade > self.right or self.xfade > min(self.first, self.chunk):
            raise ValueError("xfade must not exceed right, first or chunk")

    @property
    def first_codes(self) -> int:
        """Codes that must exist before the first audio comes out."""
        return self.first + self.right


class StreamDecoder:
    """``push(codes)`` returns the audio made final by those codes (maybe empty); ``flush()`` the rest and
    resets the decoder for the next utterance. ``pad`` frames of the codec's silence code stand before the
    first code and after the last as context and are never released (as ``WavTokenizer.decode(pad=...)``)."""

    def __init__(self, tok, config: StreamConfig | None = None, pad: int = 0, **overrides):
        self.tok = tok
        self.cfg = replace(config or StreamConfig(), **overrides)
        self.pad = max(0, int(pad))
        self.hop = tok.hop
        n = self.cfg.xfade * self.hop
        self._ramp = (0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / n)).astype(np.float32) if n else None
        self.reset()

    def reset(self) -> None:
        self._codes = self.tok.silence_codes(self.pad)  # codes from frame self._base on (the pad first)
        self._base = 0  # absolute index of self._codes[0]
        self.done = self.pad  # frames whose audio was released (or never will be: the pad)
        self._tail = None  # previous window's audio for the first `xfade` frames after `done`
        self.windows = 0  # decoder calls so far (for benchmarks)

    @property
    def n_codes(self) -> int:
        return self._base + len(self._codes)

    def push(self, codes) -> np.ndarray:
        c = self.tok._codes(codes)
        self._codes = torch.cat([self._codes, c])
        out = []
        while True:
            end = self.done + (self.cfg.first if self.done == self.pad else self.cfg.chunk)
            if self.n_codes < end + self.cfg.right:
                break
            out.append(self._release(end, end + self.cfg.right))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    def flush(self) -> np.ndarray:
        n = self.n_codes
        if n > self.done:
            self._codes = torch.cat([self._codes, self.tok.silence_codes(self.pad)])
            out = self._release(n, n + self.pad)
        else:
            out = np.zeros(0, dtype=np.float32)
        self.reset()
        return out

    def _release(self, end: int, stop: int) -> np.ndarray:
        """Decode codes [done - left, stop), release frames [done, end), keep the cross-fade tail."""
        hop, a = self.hop, self.done
        start = max(0, a - self.cfg.left)
        window = self._codes[start - self._base: stop - self._base]
        wav = self.tok.decode_batch(window[None])[0]
        self.windows += 1
        out = wav[(a - start) * hop: (end - start) * hop].copy()
        if self._tail is not None:
            n = len(self._tail)
            out[:n] = self._tail * (1 - self._ramp) + out[:n] * self._ramp
        tail = wav[(end - start) * hop: (end - start + self.cfg.xfade) * hop]
        self._tail = tail.copy() if self._ramp is not None and len(tail) == len(self._ramp) else None
        self.done = end
        # drop codes no future window can reach
        keep_from = max(0, end - self.cfg.left)
        if keep_from > self._base:
            self._codes = self._codes[keep_from - self._base:]
            self._base = keep_from
        return out
