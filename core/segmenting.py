"""Splitting long inputs: text into sentences and short pieces (TTS), audio into windows cut at silences (ASR)."""
from __future__ import annotations

import re

import numpy as np

# sentence end: . ! ? … ; (and CJK full stops) followed by space/quote/end; CJK ones need no space
_SENT_END = re.compile(r"(?<=[.!?…;])[\"')\]]*\s+|(?<=[。！？；])")
_CLAUSE = re.compile(r"(?<=[,:—–])\s+")


def _split_long(s: str, max_chars: int) -> list[str]:
    """Split an over-long sentence at clause marks, then at spaces, then hard."""
    if len(s) <= max_chars:
        return [s]
    for pattern in (_CLAUSE, re.compile(r"\s+")):
        parts = [p for p in pattern.split(s) if p]
        if len(parts) > 1:
            out, cur = [], ""
            for p in parts:
                if cur and len(cur) + 1 + len(p) > max_chars:
                    out.append(cur)
                    cur = p
                else:
                    cur = f"{cur} {p}" if cur else p
            if cur:
                out.append(cur)
            return [q for o in out for q in _split_long(o, max_chars)]
    return [s[i: i + max_chars] for i in range(0, len(s), max_chars)]


def split_sentences(text: str, max_chars: int = 200, min_chars: int = 12) -> list[str]:
    """Text -> sentences of at most ``max_chars``; fragments under ``min_chars`` join their neighbour."""
    text = " ".join(text.split())
    if not text:
        return []
    pieces = [p.strip() for p in _SENT_END.split(text) if p and p.strip()]
    merged: list[str] = []
    for p in pieces:
        if merged and (len(merged[-1]) < min_chars) and len(merged[-1]) + 1 + len(p) <= max_chars:
            merged[-1] = f"{merged[-1]} {p}"
        else:
            merged.append(p)
    if len(merged) > 1 and len(merged[-1]) < min_chars and len(merged[-2]) + 1 + len(merged[-1]) <= max_chars:
        merged[-2:] = [f"{merged[-2]} {merged[-1]}"]
    return [q for m in merged for q in _split_long(m, max_chars)]


def split_words(text: str, max_words: int) -> list[str]:
    """Text -> consecutive pieces of at most ``max_words`` words, as few as possible and as even as possible
    (7 words by 3: 3 + 2 + 2); ``max_words`` < 1 keeps the text whole."""
    words = text.split()
    if max_words < 1 or len(words) <= max_words:
        return [" ".join(words)] if words else []
    n = -(-len(words) // max_words)
    q, r = divmod(len(words), n)
    out, i = [], 0
    for k in range(n):
        size = q + (k < r)
        out.append(" ".join(words[i:i + size]))
        i += size
    return out


def frame_energy(wav: np.ndarray, frame: int) -> np.ndarray:
    """RMS per frame of ``frame`` samples (the last partial frame included)."""
    n = -(-len(wav) // frame)
    padded = np.zeros(n * frame, dtype=np.float32)
    padded[: len(wav)] = wav
    return np.sqrt((padded.reshape(n, frame) ** 2).mean(axis=1) + 1e-12)


def split_audio(wav: np.ndarray, sample_rate: int, max_s: float, min_s: float | None = None,
                frame_s: float = 0.02, smooth_s: float = 0.2) -> list[tuple[int, int]]:
    """Windows [start, end) in samples, each at most ``max_s`` long, cut at the quietest point (smoothed frame
    energy) between ``min_s`` (default max_s / 2) and ``max_s`` after the window's start."""
    n = len(wav)
    max_len = max(1, int(max_s * sample_rate))
    if n <= max_len:
        return [(0, n)]
    min_len = int((min_s if min_s is not None else max_s / 2) * sample_rate)
    frame = max(1, int(frame_s * sample_rate))
    e = frame_energy(np.asarray(wav, dtype=np.float32), frame)
    k = max(1, int(round(smooth_s / frame_s)))
    if k > 1:
        e = np.convolve(e, np.ones(k) / k, mode="same")
    out, start = [], 0
    while n - start > max_len:
        lo = (start + min_len) // frame + 1
        hi = (start + max_len) // frame
        if hi <= lo:
            cut = start + max_len
        else:
            cut = (lo + int(np.argmin(e[lo:hi]))) * frame
            cut = min(max(cut, start + 1), start + max_len)
        out.append((start, cut))
        start = cut
    out.append((start, n))
    return out
