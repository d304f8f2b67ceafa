"""core.resample: torchaudio's windowed-sinc Resample, checked against an independent direct evaluation."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from aromni.core.audio_io import load_audio
from aromni.core.resample import output_length, reduced_rates, resample, sinc_kernel, sinc_resample

RATES = [(44100, 24000), (22050, 24000), (16000, 24000), (48000, 24000), (8000, 24000), (24000, 16000),
         (32000, 24000), (11025, 24000)]


def direct_filter(orig_freq: int, new_freq: int, lpw: int = 6, rolloff: float = 0.99) -> tuple[np.ndarray, int]:
    """The filter bank by its definition, one tap at a time in Python floats (float64).

    The only float32 step is the phase offset -j/new: torchaudio's Resample divides an integer arange by
    ``new``, which torch does in its default dtype (float32) before adding the float64 tap offsets."""
    g = math.gcd(orig_freq, new_freq)
    o, n = orig_freq // g, new_freq // g
    base = min(o, n) * rolloff
    width = math.ceil(lpw * o / base)
    bank = np.empty((n, 2 * width + o))
    for j in range(n):
        phase = float(np.float32(-j) / np.float32(n))
        for k in range(2 * width + o):
            t = min(max((phase + (k - width) / o) * base, -lpw), lpw)
            hann = math.cos(t * math.pi / lpw / 2) ** 2
            x = t * math.pi
            bank[j, k] = (1.0 if x == 0 else math.sin(x) / x) * (hann * (base / o))
    return bank, width


def direct_resample(x: np.ndarray, orig_freq: int, new_freq: int, lpw: int = 6, rolloff: float = 0.99) -> np.ndarray:
    """y[m] = sum_i x[i] h(i/orig - m/new), x zero outside, h the Hann-windowed sinc, all in float64."""
    o, n = reduced_rates(orig_freq, new_freq)
    base = min(o, n) * rolloff
    width = math.ceil(lpw * o / base)
    out = np.empty(math.ceil(n * len(x) / o))
    for m in range(len(out)):
        q = m // n
        i = np.arange(q * o - width, q * o + width + o)
        t = np.clip((i / o - m / n) * base, -lpw, lpw)
        h = np.sinc(t) * np.cos(t * np.pi / lpw / 2) ** 2 * base / o
        ok = (i >= 0) & (i < len(x))
        out[m] = np.dot(x[i[ok]].astype(np.float64), h[ok])
    return out


@pytest.mark.parametrize("orig,new", RATES)
def test_kernel_equals_the_direct_evaluation_bit_for_bit(orig, new):
    bank, width = sinc_kernel(orig, new)
    ref, ref_width = direct_filter(orig, new)
    assert width == ref_width and bank.dtype == torch.float32 and bank.shape == (ref.shape[0], 1, ref.shape[1])
    assert np.array_equal(bank[:, 0].numpy(), ref.astype(np.float32))


def test_kernel_literal_values():
    # 44.1 kHz -> 24 kHz: gcd 300, 147 -> 80, cutoff 79.2, width ceil(6 * 147 / 79.2) = 12, 2 * 12 + 147 taps
    bank, width = sinc_kernel(44100, 24000)
    assert (width, tuple(bank.shape)) == (12, (80, 1, 171))
    assert bank[0, 0, 12].item() == np.float32(79.2 / 147)  # t = 0: sinc 1, window 1, gain cutoff / orig
    assert tuple(sinc_kernel(22050, 24000)[0].shape) == (160, 1, 161) and sinc_kernel(22050, 24000)[1] == 7
    assert tuple(sinc_kernel(16000, 24000)[0].shape) == (3, 1, 16) and sinc_kernel(16000, 24000)[1] == 7
    assert tuple(sinc_kernel(48000, 24000)[0].shape) == (1, 1, 28) and sinc_kernel(48000, 24000)[1] == 13
    # a tap beyond the 6th zero crossing is clamped onto it, where both sinc and window vanish
    assert abs(bank[0, 0, 0].item()) < 1e-30 and abs(bank[0, 0, 1].item()) > 1e-6
    assert reduced_rates(44100, 24000) == (147, 80)


def test_output_length_rounds_up():
    assert output_length(44100, 44100, 24000) == 24000
    assert output_length(1, 44100, 24000) == 1  # ceil(80 / 147)
    assert output_length(1000, 22050, 24000) == 1089  # ceil(1088.43...)
    assert output_length(7, 48000, 24000) == 4
    assert output_length(0, 48000, 24000) == 0


@pytest.mark.parametrize("orig,new,n", [(44100, 24000, 2000), (22050, 24000, 1500), (16000, 24000, 777),
                                        (48000, 24000, 1001), (24000, 16000, 999)])
def test_resample_equals_the_direct_sum(orig, new, n):
    rng = np.random.default_rng(orig + n)
    x = (rng.standard_normal(n) * 0.3).astype(np.float32)
    y = sinc_resample(torch.from_numpy(x), orig, new)
    ref = direct_resample(x, orig, new)
    assert y.shape == (math.ceil(new // math.gcd(orig, new) * n / (orig // math.gcd(orig, new))),) == ref.shape
    np.testing.assert_allclose(y.numpy(), ref, rtol=0, atol=2e-5)


def test_float32_kernel_variant_is_close_but_not_the_same():
    # torchaudio.functional.resample on float32 input builds the bank in float32: a few ulps away
    a, _ = sinc_kernel(44100, 24000)
    b, _ = sinc_kernel(44100, 24000, kernel_dtype=torch.float32)
    assert not torch.equal(a, b)
    torch.testing.assert_close(a, b, rtol=0, atol=2e-5)


def test_batch_shapes_identity_and_errors():
    x = torch.randn(2, 3, 500)
    y = sinc_resample(x, 22050, 24000)
    assert y.shape == (2, 3, output_length(500, 22050, 24000))
    torch.testing.assert_close(y[1, 2], sinc_resample(x[1, 2], 22050, 24000))  # (conv sums may differ by batch)
    assert sinc_resample(x, 24000, 24000) is x
    with pytest.raises(TypeError):
        sinc_resample(torch.ones(10, dtype=torch.long), 2, 3)
    with pytest.raises(ValueError):
        sinc_resample(x, 0, 24000)
    with pytest.raises(ValueError, match="unknown resampler"):
        resample(np.zeros(4, np.float32), 8000, 16000, "linear")


def test_load_audio_with_sinc_matches_the_resampler():
    import soundfile as sf

    rng = np.random.default_rng(1)
    stereo = (rng.standard_normal((4410, 2)) * 0.2).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, stereo, 44100, format="WAV", subtype="FLOAT")
    data = buf.getvalue()
    mono = stereo.mean(axis=1)
    got = load_audio(data, 24000, resampler="sinc")
    assert np.array_equal(got, sinc_resample(torch.from_numpy(mono), 44100, 24000).numpy())
    assert len(got) == 2400
    soxr_out = load_audio(data, 24000)  # the default stays soxr
    assert soxr_out.shape == got.shape and not np.array_equal(soxr_out, got)
