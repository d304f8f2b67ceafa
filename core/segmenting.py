"""Splitting long inputs: text into sentences and short pieces (TTS), audio into windows cut at silences (ASR)."""
from __future__ import annotations

import re

import numpy as np

from .levels import frame_energy

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


PAUSE_S = 0.3  # a silence at least this long separates utterances (pauses inside a sentence are shorter)
MARGIN_S = 0.08  # silence kept after each utterance, as the corpus trims its training clips
LEAD_S = 0.08  # silence kept before it (0.02 s, nearer the corpus's clip starts, measured worse: 35.7 vs 31.6 %)
MIN_SPEECH_S = 0.3  # a sound shorter than this joins its nearest neighbour rather than standing alone
SILENCE_DB = 40.0  # frames this far below the loud level (95th percentile of frame energy) are silence


def speech_segments(wav: np.ndarray, sample_rate: int, pause_s: float = PAUSE_S, frame_s: float = 0.02,
                    silence_db: float = SILENCE_DB) -> list[tuple[int, int]]:
    """Stretches of sound [start, end) in samples, separated by silences of at least ``pause_s``.

    Energy-based: a 20 ms frame is silent when its RMS is more than ``silence_db`` below the recording's loud
    level (95th percentile of frame energy); in a noisy recording, also when it is within 10 dB of the noise
    floor (5th percentile), but the level never rises above 20 dB under the loud level (a short clip with
    little silence has a "floor" that is really soft speech)."""
    wav = np.asarray(wav, dtype=np.float32)
    frame = max(1, int(frame_s * sample_rate))
    db = 20 * np.log10(frame_energy(wav, frame))
    if len(db) == 0:
        return []
    loud, floor = np.percentile(db, 95), np.percentile(db, 5)
    level = max(loud - silence_db, min(floor + 10.0, loud - 20.0)) if loud - floor > 10.0 else -np.inf
    sound = db > level
    min_gap = max(1, int(round(pause_s / frame_s)))
    segs: list[list[int]] = []
    for i in np.flatnonzero(sound):
        if segs and i - segs[-1][1] < min_gap:
            segs[-1][1] = int(i) + 1
        else:
            segs.append([int(i), int(i) + 1])
    # sample-exact edges: the first and last sample louder than the silence level (as the corpus trims clips)
    n, amp = len(wav), 10 ** (level / 20)
    out = []
    for a, b in segs:
        lo, hi = max(0, (a - 1) * frame), min(n, (b + 1) * frame)
        loud_idx = np.flatnonzero(np.abs(wav[lo:hi]) > amp)
        edge = (lo + int(loud_idx[0]), lo + int(loud_idx[-1]) + 1) if loud_idx.size else (a * frame, min(b * frame, n))
        out.append(edge)
    return out


def split_at_pauses(wav: np.ndarray, sample_rate: int, max_s: float, pause_s: float = PAUSE_S,
                    margin_s: float = MARGIN_S, min_speech_s: float = MIN_SPEECH_S, lead_s: float = LEAD_S
                    ) -> list[tuple[int, int]]:
    """Windows [start, end) for speech recognition: one per utterance (sound between pauses of ``pause_s``),
    with up to ``lead_s`` of silence before and ``margin_s`` after (never past the middle of a pause), so a
    window sounds like a single training clip and no word is ever cut in two. Sounds shorter than
    ``min_speech_s`` join their nearer neighbour when the joint window fits; an utterance longer than
    ``max_s`` is cut at its quietest points (``split_audio``). One utterance (or silence) that fits is one
    window over everything."""
    n = len(wav)
    max_len = max(1, int(max_s * sample_rate))
    segs = [list(s) for s in speech_segments(wav, sample_rate, pause_s)]
    if len(segs) <= 1 and n <= max_len:
        return [(0, n)]  # one utterance (or silence) that fits: as it is
    if not segs:
        return split_audio(wav, sample_rate, max_s)
    short = int(min_speech_s * sample_rate)
    merged = True
    while merged and len(segs) > 1:  # fold each short sound into its nearer neighbour, one at a time
        merged = False
        for k, (a, b) in enumerate(segs):
            if b - a >= short:
                continue
            near = sorted((a - segs[j][1] if j < k else segs[j][0] - b, j) for j in (k - 1, k + 1)
                          if 0 <= j < len(segs))
            for _, j in near:
                lo, hi = min(a, segs[j][0]), max(b, segs[j][1])
                if hi - lo <= max_len:
                    segs[min(k, j)] = [lo, hi]
                    del segs[max(k, j)]
                    merged = True
                    break
            if merged:
                break
    margin, lead = int(margin_s * sample_rate), int(lead_s * sample_rate)
    out: list[tuple[int, int]] = []
    for i, (a, b) in enumerate(segs):
        lo = max(a - lead, 0 if i == 0 else (segs[i - 1][1] + a) // 2)
        hi = min(b + margin, n if i + 1 == len(segs) else (b + segs[i + 1][0]) // 2)
        if hi - lo <= max_len:
            out.append((lo, hi))
        else:
            out += [(lo + s, lo + e) for s, e in split_audio(wav[lo:hi], sample_rate, max_s)]
    return out
