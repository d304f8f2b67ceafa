"""Training-audio augmentation (core/corpus/augment.py): measured effects and determinism."""
from __future__ import annotations

import math

import numpy as np
import pytest

from aromni.core.corpus import augment as A

SR = 16000


def tone(freq: float, seconds: float = 1.0, sr: int = SR, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(x: np.ndarray, sr: int = SR) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1 / sr)[int(np.argmax(spec))])


def level_db(x: np.ndarray) -> float:
    return 10 * math.log10(A.power(x) + 1e-20)


def speechlike(seconds: float = 1.5, seed: int = 0) -> np.ndarray:
    """Harmonics of a gliding 120-220 Hz voice under a syllable envelope."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = 120 + 100 * (0.5 + 0.5 * np.sin(2 * np.pi * 0.7 * t))
    ph = 2 * np.pi * np.cumsum(f0) / SR
    x = sum(np.sin(h * ph) / h for h in range(1, 12)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) ** 2
    return (0.2 * x + 0.001 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.mark.parametrize("kind", A.NOISES)
@pytest.mark.parametrize("snr", [10.0, 20.0, 30.0])
def test_noise_at_the_requested_snr(kind, snr):
    clean = speechlike()
    noisy = A.add_noise(clean, SR, snr, kind, np.random.default_rng(1))
    assert noisy.dtype == np.float32 and noisy.shape == clean.shape
    assert abs(A.snr_db(clean, noisy - clean) - snr) <= 0.5


def test_noise_colours_differ():
    rng = np.random.default_rng(0)
    f = np.fft.rfftfreq(SR * 2, 1 / SR)
    for kind, want in (("white", 1.0), ("pink", 10.0), ("brown", 100.0)):  # power per Hz falls as 1 / f**k
        spec = np.abs(np.fft.rfft(A.noise(kind, SR * 2, SR, rng))) ** 2
        ratio = spec[(f >= 100) & (f < 200)].mean() / spec[(f >= 1000) & (f < 2000)].mean()
        assert ratio == pytest.approx(want, rel=0.3), kind
    hum = A.noise("hum", SR, SR, rng)
    assert peak_hz(hum) in (50.0, 60.0)


def test_telephone_band_limits():
    for f, lo, hi in ((5000, None, -30.0), (1000, -1.0, 1.0), (100, None, -10.0)):
        x = tone(f)
        y = A.telephone(x, SR)
        assert y.shape == x.shape
        core = slice(SR // 10, -SR // 10)  # away from the edges
        d = level_db(y[core]) - level_db(x[core])
        if lo is not None:
            assert d >= lo
        assert d <= hi, (f, d)


def test_telephone_at_8k_and_24k():
    for sr in (8000, 24000):
        y = A.telephone(tone(1000, sr=sr), sr)
        assert peak_hz(y, sr) == pytest.approx(1000, abs=2)


def test_speed_changes_duration_and_pitch():
    x = tone(440)
    y = A.speed(x, SR, 1.1)
    assert y.size == pytest.approx(x.size / 1.1, abs=2)
    assert peak_hz(y) == pytest.approx(440 * 1.1, rel=0.01)


@pytest.mark.parametrize("factor", [0.8, 1.25])
def test_tempo_keeps_pitch(factor):
    x = tone(300)
    y = A.tempo(x, SR, factor)
    assert y.size == int(round(x.size / factor))
    assert peak_hz(y) == pytest.approx(300, rel=0.02)


@pytest.mark.parametrize("semitones", [-3.0, 2.0])
def test_pitch_keeps_duration(semitones):
    x = tone(300)
    y = A.pitch(x, SR, semitones)
    assert y.size == x.size
    assert peak_hz(y[SR // 10: -SR // 10]) == pytest.approx(300 * 2 ** (semitones / 12), rel=0.02)


def test_reverb_decays_at_rt60():
    rt60 = 0.4
    h = A.room_impulse(SR, rt60, np.random.default_rng(0)).astype(np.float64)
    # Schroeder backward integral of the tail: the decay from -5 to -25 dB, extrapolated to 60 dB
    tail = h[1:] ** 2
    edc = 10 * np.log10(np.cumsum(tail[::-1])[::-1] / tail.sum())
    t5, t25 = np.argmax(edc <= -5) / SR, np.argmax(edc <= -25) / SR
    assert 3 * (t25 - t5) == pytest.approx(rt60, rel=0.2)
    x = speechlike()
    y = A.reverb(x, SR, rt60, np.random.default_rng(0))
    assert y.shape == x.shape and level_db(y) == pytest.approx(level_db(x), abs=0.01)
    assert not np.allclose(x, y, atol=1e-3)


def test_gain_changes_level_without_clipping():
    x = speechlike()
    assert level_db(A.gain(x, -12.0)) - level_db(x) == pytest.approx(-12.0, abs=0.01)
    loud = A.gain(x, 40.0)
    assert np.max(np.abs(loud)) <= 0.99 + 1e-6


def test_mulaw_round_trip_is_close():
    x = speechlike()
    assert A.snr_db(x, A.mulaw(x) - x) > 30


def test_augment_is_seeded_and_records_its_chain():
    x = speechlike()
    a, ca = A.augment(x, SR, seed=7)
    b, cb = A.augment(x, SR, seed=7)
    assert ca == cb and np.array_equal(a, b)
    outs = {A.augment(x, SR, seed=s)[1] for s in range(20)}
    assert len(outs) > 10  # the seed picks different chains
    cfg = A.AugmentConfig(p_speed=1, p_pitch=1, p_reverb=1, p_noise=1, p_telephone=1, p_gain=1)
    y, chain = A.augment(x, SR, seed=3, cfg=cfg)
    d = chain.to_dict()
    assert set(d) == {"speed", "semitones", "rt60", "noise", "snr", "telephone", "gain_db"}
    assert 10 <= d["snr"] <= 30 and 0.9 <= d["speed"] <= 1.1
    assert y.size == pytest.approx(x.size / d["speed"], abs=4)
    assert np.isfinite(y).all() and np.max(np.abs(y)) <= 1.0


def test_bad_arguments():
    with pytest.raises(ValueError):
        A.noise("rain", 10, SR, np.random.default_rng(0))
    with pytest.raises(ValueError):
        A.speed(tone(100), SR, 0)
