"""Augmentation of synthetic training speech (codec and ASR): speed, tempo and pitch changes, background noise at a
given SNR, simple reverberation, level changes and telephone band-limiting.

Every noise source is synthetic (white, pink, brown, hum, babble-like modulated noise): the real recordings this
project knows of (core/eval/real_speech.py) are for evaluation only and never go into training audio.
Everything is deterministic: the randomness comes from the ``numpy.random.Generator`` passed in, so one seed gives
one output. Signals are mono float32 numpy arrays.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ..resample import resample

NOISES = ("white", "pink", "brown", "hum", "babble")
EPS = 1e-12


def _f32(wav: np.ndarray) -> np.ndarray:
    return np.asarray(wav, dtype=np.float32).reshape(-1)


def power(wav: np.ndarray) -> float:
    """Mean square of ``wav``."""
    w = np.asarray(wav, dtype=np.float64)
    return float(np.mean(w * w)) if w.size else 0.0


def snr_db(clean: np.ndarray, noise: np.ndarray) -> float:
    """Signal-to-noise ratio of ``clean`` over ``noise`` in dB."""
    return 10.0 * math.log10((power(clean) + EPS) / (power(noise) + EPS))


# ----------------------------------------------------------------------------------------------
# speed, tempo, pitch
# ----------------------------------------------------------------------------------------------
def speed(wav: np.ndarray, sr: int, factor: float) -> np.ndarray:
    """Play ``factor`` times faster (Kaldi-style speed perturbation): duration / factor, pitch * factor."""
    if factor <= 0:
        raise ValueError("speed factor must be > 0")
    if factor == 1.0:
        return _f32(wav)
    return resample(_f32(wav), int(round(sr * factor)), sr)


def tempo(wav: np.ndarray, sr: int, factor: float, frame_s: float = 0.04) -> np.ndarray:
    """Duration / ``factor`` at the same pitch: WSOLA (overlap-add of Hann frames, each placed where it best
    continues the previous one within +-half a hop)."""
    if factor <= 0:
        raise ValueError("tempo factor must be > 0")
    x = _f32(wav)
    if factor == 1.0 or x.size == 0:
        return x
    n = max(16, int(frame_s * sr)) // 2 * 2
    hop = n // 2
    tol = hop // 2
    win = np.hanning(n).astype(np.float32)
    out_len = int(round(x.size / factor))
    out = np.zeros(out_len + n, dtype=np.float32)
    norm = np.zeros(out_len + n, dtype=np.float32)
    xp = np.concatenate([np.zeros(tol, np.float32), x, np.zeros(n + tol, np.float32)])
    prev = None  # the natural continuation of the last frame placed
    k = 0
    while k * hop < out_len:
        centre = tol + int(round(k * hop * factor))
        if prev is None:
            start = centre
        else:  # best match with the continuation, by cross-correlation over the tolerance
            seg = xp[centre - tol: centre + tol + n]
            corr = np.correlate(seg, prev, mode="valid")
            start = centre - tol + int(np.argmax(corr))
        frame = xp[start: start + n]
        if frame.size < n:
            break
        out[k * hop: k * hop + n] += frame * win
        norm[k * hop: k * hop + n] += win
        prev = xp[start + hop: start + hop + n]
        if prev.size < n:
            break
        k += 1
    norm[norm < 1e-3] = 1.0
    return (out / norm)[:out_len]


def pitch(wav: np.ndarray, sr: int, semitones: float) -> np.ndarray:
    """Shift the pitch by ``semitones`` at the same duration (speed change, then tempo back)."""
    if semitones == 0:
        return _f32(wav)
    f = 2.0 ** (semitones / 12.0)
    x = _f32(wav)
    y = tempo(speed(x, sr, f), sr, 1.0 / f)
    return _fit(y, x.size)


def _fit(y: np.ndarray, n: int) -> np.ndarray:
    return y[:n] if y.size >= n else np.concatenate([y, np.zeros(n - y.size, np.float32)])


# ----------------------------------------------------------------------------------------------
# noise
# ----------------------------------------------------------------------------------------------
def _coloured(n: int, rng: np.random.Generator, exponent: float) -> np.ndarray:
    """Noise whose power spectrum falls as 1 / f**exponent (0 white, 1 pink, 2 brown)."""
    spec = rng.standard_normal(n // 2 + 1) + 1j * rng.standard_normal(n // 2 + 1)
    f = np.arange(n // 2 + 1, dtype=np.float64)
    f[0] = 1.0
    spec /= f ** (exponent / 2.0)
    spec[0] = 0.0
    return np.fft.irfft(spec, n)


def noise(kind: str, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of synthetic background noise (unit power): ``white``, ``pink``, ``brown``, ``hum`` (mains
    at 50 or 60 Hz with harmonics, plus a little white noise) or ``babble`` (pink noise under a slow syllable-rate
    envelope, like distant talk)."""
    if kind not in NOISES:
        raise ValueError(f"unknown noise {kind!r} (known: {', '.join(NOISES)})")
    if n <= 0:
        return np.zeros(0, np.float32)
    if kind in ("white", "pink", "brown"):
        y = _coloured(n, rng, NOISES.index(kind))
    elif kind == "hum":
        t = np.arange(n) / sr
        base = rng.choice([50.0, 60.0])
        y = sum(rng.uniform(0.2, 1.0) / h * np.sin(2 * np.pi * base * h * t + rng.uniform(0, 2 * np.pi))
                for h in range(1, 6))
        y = y + 0.05 * rng.standard_normal(n)
    else:
        y = np.zeros(n)
        t = np.arange(n) / sr
        for _ in range(4):  # a few overlapping "talkers"
            rate = rng.uniform(3.0, 6.0)  # syllables per second
            env = 0.5 * (1 + np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi)))
            y += _coloured(n, rng, 1.0) * env ** 2
    y = np.asarray(y, dtype=np.float64)
    return (y / math.sqrt(power(y) + EPS)).astype(np.float32)


def add_noise(wav: np.ndarray, sr: int, snr: float, kind: str, rng: np.random.Generator) -> np.ndarray:
    """``wav`` plus ``kind`` noise scaled so that the signal-to-noise ratio is exactly ``snr`` dB."""
    x = _f32(wav)
    nz = noise(kind, x.size, sr, rng).astype(np.float64)
    scale = math.sqrt(power(x) / (10.0 ** (snr / 10.0)) / (power(nz) + EPS))
    return (x + scale * nz).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# reverberation, level, telephone
# ----------------------------------------------------------------------------------------------
def room_impulse(sr: int, rt60: float, rng: np.random.Generator, pre_delay_s: float = 0.005) -> np.ndarray:
    """A simple room: the direct sound, then exponentially decaying noise reaching -60 dB after ``rt60`` s."""
    n = max(1, int(sr * rt60 * 1.2))
    t = np.arange(n) / sr
    tail = rng.standard_normal(n) * 10.0 ** (-3.0 * t / rt60)  # amplitude -60 dB at rt60
    d = int(pre_delay_s * sr)
    tail[:d] = 0.0
    h = 0.5 * tail / math.sqrt(np.sum(tail ** 2) + EPS)
    h[0] = 1.0
    return h.astype(np.float32)


def _convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    n = x.size + h.size - 1
    m = 1 << (n - 1).bit_length()
    return np.fft.irfft(np.fft.rfft(x, m) * np.fft.rfft(h, m), m)[:n]


def reverb(wav: np.ndarray, sr: int, rt60: float, rng: np.random.Generator) -> np.ndarray:
    """``wav`` in a simple room of reverberation time ``rt60`` s (same length and RMS as the input)."""
    x = _f32(wav)
    if rt60 <= 0 or x.size == 0:
        return x
    y = _convolve(x.astype(np.float64), room_impulse(sr, rt60, rng).astype(np.float64))[: x.size]
    return (y * math.sqrt(power(x) / (power(y) + EPS))).astype(np.float32)


def gain(wav: np.ndarray, db: float, limit: float = 0.99) -> np.ndarray:
    """``wav`` changed by ``db`` decibels; a louder result is scaled down to peak at ``limit`` (no clipping)."""
    y = _f32(wav) * np.float32(10.0 ** (db / 20.0))
    peak = float(np.max(np.abs(y))) if y.size else 0.0
    return y * np.float32(limit / peak) if peak > limit else y


def _band(n: int, sr: int, lo: float, hi: float, width: float) -> np.ndarray:
    """rfft gain: 1 in [lo, hi], raised-cosine transitions ``width`` Hz wide outside, 0 beyond."""
    f = np.fft.rfftfreq(n, 1.0 / sr)
    g = np.ones_like(f)
    below = f < lo
    g[below] = 0.5 * (1 + np.cos(np.pi * np.clip((lo - f[below]) / width, 0, 1)))
    above = f > hi
    g[above] = 0.5 * (1 + np.cos(np.pi * np.clip((f[above] - hi) / width, 0, 1)))
    return g


def mulaw(wav: np.ndarray, mu: int = 255) -> np.ndarray:
    """G.711-style 8-bit mu-law quantisation round trip."""
    x = np.clip(_f32(wav), -1.0, 1.0).astype(np.float64)
    q = np.round(np.sign(x) * np.log1p(mu * np.abs(x)) / math.log1p(mu) * 127.0) / 127.0
    return (np.sign(q) * ((1 + mu) ** np.abs(q) - 1) / mu).astype(np.float32)


def telephone(wav: np.ndarray, sr: int, lo: float = 300.0, hi: float = 3400.0, codec: bool = True) -> np.ndarray:
    """Telephone channel: band-pass ``lo``-``hi`` Hz, a round trip through 8 kHz, and (``codec``) 8-bit mu-law.
    The result has the input's rate and length."""
    x = _f32(wav)
    if x.size == 0:
        return x
    n = x.size
    y = np.fft.irfft(np.fft.rfft(x.astype(np.float64)) * _band(n, sr, lo, hi, 100.0), n).astype(np.float32)
    if sr != 8000:
        y = resample(y, sr, 8000)
    if codec:
        y = mulaw(y)
    if sr != 8000:
        y = resample(y, 8000, sr)
    return _fit(y, n)


# ----------------------------------------------------------------------------------------------
# a random chain
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of the random chain (``draw``)."""

    p_speed: float = 0.5
    speed: tuple = (0.9, 1.1)
    p_pitch: float = 0.3
    semitones: tuple = (-3.0, 3.0)
    p_reverb: float = 0.3
    rt60: tuple = (0.15, 0.6)
    p_noise: float = 0.5
    snr: tuple = (10.0, 30.0)
    noises: tuple = NOISES
    p_telephone: float = 0.15
    p_gain: float = 0.5
    gain_db: tuple = (-12.0, 6.0)


@dataclass(frozen=True)
class Chain:
    """One draw of augmentations (None: not applied), in the order ``apply`` runs them."""

    speed: float | None = None
    semitones: float | None = None
    rt60: float | None = None
    noise: str | None = None
    snr: float | None = None
    telephone: bool = False
    gain_db: float | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, False)}


def draw(rng: np.random.Generator, cfg: AugmentConfig = AugmentConfig()) -> Chain:
    """A random chain: each augmentation applied with its probability, its parameter uniform in its range."""
    def maybe(p, lo_hi):
        on = rng.random() < p
        v = float(rng.uniform(*lo_hi))  # always drawn: the stream of draws does not depend on earlier coins
        return round(v, 4) if on else None

    sp = maybe(cfg.p_speed, cfg.speed)
    st = maybe(cfg.p_pitch, cfg.semitones)
    rt = maybe(cfg.p_reverb, cfg.rt60)
    snr = maybe(cfg.p_noise, cfg.snr)
    kind = cfg.noises[int(rng.integers(len(cfg.noises)))]
    tel = bool(rng.random() < cfg.p_telephone)
    g = maybe(cfg.p_gain, cfg.gain_db)
    return Chain(sp, st, rt, kind if snr is not None else None, snr, tel, g)


def apply(wav: np.ndarray, sr: int, chain: Chain, rng: np.random.Generator) -> np.ndarray:
    """``wav`` through ``chain``: speed, pitch, reverberation, noise, telephone, level (that order)."""
    y = _f32(wav)
    if chain.speed is not None:
        y = speed(y, sr, chain.speed)
    if chain.semitones is not None:
        y = pitch(y, sr, chain.semitones)
    if chain.rt60 is not None:
        y = reverb(y, sr, chain.rt60, rng)
    if chain.noise is not None and chain.snr is not None:
        y = add_noise(y, sr, chain.snr, chain.noise, rng)
    if chain.telephone:
        y = telephone(y, sr)
    if chain.gain_db is not None:
        y = gain(y, chain.gain_db)
    return y


def augment(wav: np.ndarray, sr: int, seed: int, cfg: AugmentConfig = AugmentConfig()) -> tuple[np.ndarray, Chain]:
    """One seeded random augmentation of ``wav``: (audio, the chain applied). Same seed, same output."""
    rng = np.random.default_rng(seed)
    chain = draw(rng, cfg)
    return apply(wav, sr, chain, rng), chain
