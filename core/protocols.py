"""What the decoding engine and trainer need from each tokenizer (structural interfaces)."""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class TextTokenizer(Protocol):
    def encode(self, text: str) -> list[int]:
        """Text -> joint-vocabulary ids (already offset into the model's text range)."""

    def decode(self, ids: list[int]) -> str:
        """Joint ids -> text; ids outside the text range are skipped."""

    def save(self, root: str) -> dict:
        """Write files under ``root``; return the bundle spec (``{"type": ..., ...}``)."""


@runtime_checkable
class ImageTokenizer(Protocol):
    n_tokens: int  # codes per image (grid * grid)
    codebook_size: int
    resolution: int

    def encode(self, images: list) -> torch.Tensor:
        """PIL images -> codes [N, n_tokens] (int64), preprocessed as the reference."""

    def decode(self, codes: torch.Tensor) -> list:
        """codes [N, n_tokens] -> PIL images."""

    def codebook(self) -> torch.Tensor:
        """[codebook_size, embed_dim] VQ embedding (the perceptual-loss target)."""

    def save(self, root: str) -> dict: ...


@runtime_checkable
class SpeechTokenizer(Protocol):
    sample_rate: int
    hop: int  # samples per code
    codebook_size: int

    def encode(self, wav: np.ndarray) -> torch.Tensor:
        """mono float wav at ``sample_rate`` -> codes [L] (int64)."""

    def decode(self, codes: torch.Tensor, pad: int = 0) -> np.ndarray:
        """codes [L] -> mono float wav [L * hop]; ``pad`` frames of silence decoded around them as context."""

    def stream(self, pad: int = 0):
        """A chunked decoder: ``push(codes) -> np.ndarray`` (audio ready so far), ``flush() -> np.ndarray``."""

    def save(self, root: str) -> dict: ...
