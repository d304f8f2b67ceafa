"""Chunked speech decoding: timing of releases, invariance to how codes arrive, closeness to a whole decode."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from aromni.core.errors import InputError
from aromni.core.speech_stream import StreamConfig
from aromni.core.speech_tokenizer import build_speech_tokenizer
from aromni.core.train.codec import kmeans_init


def speechlike(sr: int, seconds: float, seed: int = 0) -> np.ndarray:
    """Syllable-rate bursts of harmonic tone with gliding pitch and pauses."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    f0 = 120 * (1 + 0.25 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    wav = sum(np.sin(h * phase) / h for h in range(1, 10))
    env = np.clip(np.sin(2 * np.pi * 3.1 * t + rng.uniform(0, 6)), 0, None) * (np.sin(2 * np.pi * 0.4 * t) > -0.6)
    return (0.3 * wav * env + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def tok_codes():
    """Tiny codec with its codebook k-means'd on speech-like audio (so codes vary like speech), and ~6 s of codes."""
    tok = build_speech_tokenizer("tiny", seed=0)
    wav = speechlike(tok.sample_rate, 6.0)
    with torch.inference_mode():
        z = tok.net.encode_latents(torch.from_numpy(wav)[None])[0].T.clone()
    kmeans_init(tok.net.quantizer, z, 10, torch.Generator().manual_seed(0), len(z))
    codes = tok.encode(wav)
    assert len(set(codes.tolist())) > 10
    return tok, codes


def snr_db(ref, est) -> float:
    ref, est = np.asarray(ref, np.float64), np.asarray(est, np.float64)
    return 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - est) ** 2))


def run_stream(tok, codes, sizes, **geom) -> tuple[np.ndarray, list[int]]:
    """Push ``codes`` in pieces of ``sizes`` (cycled); returns the audio and the samples released per push."""
    dec = tok.stream(**geom)
    out, released, i, k = [], [], 0, 0
    while i < len(codes):
        n = sizes[k % len(sizes)]
        piece = dec.push(codes[i: i + n])
        out.append(piece)
        released.append(len(piece))
        i, k = i + n, k + 1
    out.append(dec.flush())
    return np.concatenate(out), released


def test_release_schedule(tok_codes):
    tok, codes = tok_codes
    cfg = StreamConfig(first=6, chunk=5, left=20, right=3, xfade=2)
    dec = tok.stream(cfg)
    lens = [len(dec.push(codes[i: i + 1])) for i in range(40)]
    # nothing until first + right codes, then `first` frames, then `chunk` frames every `chunk` codes
    assert cfg.first_codes == 9
    assert lens[:8] == [0] * 8 and lens[8] == 6 * tok.hop
    nonzero = [(i, n) for i, n in enumerate(lens) if n]
    assert [i for i, _ in nonzero] == [8, 13, 18, 23, 28, 33, 38]
    assert all(n == 5 * tok.hop for _, n in nonzero[1:])
    rest = dec.flush()
    assert sum(lens) + len(rest) == 40 * tok.hop


@pytest.mark.parametrize("n", [1, 5, 9, 10, 37, 100])
def test_total_length(tok_codes, n):
    tok, codes = tok_codes
    y, _ = run_stream(tok, codes[:n], [1], first=6, chunk=5, left=20, right=3, xfade=2)
    assert y.shape == (n * tok.hop,) and y.dtype == np.float32


def test_short_utterance_is_exact(tok_codes):
    # fewer codes than the first window needs: flush decodes them all at once, exactly as decode()
    tok, codes = tok_codes
    y, released = run_stream(tok, codes[:15], [4])
    assert sum(released) == 0
    np.testing.assert_array_equal(y, tok.decode(codes[:15]))


def test_push_granularity_does_not_matter(tok_codes):
    tok, codes = tok_codes
    a, _ = run_stream(tok, codes, [1])
    b, _ = run_stream(tok, codes, [7, 1, 30, 3])
    c, _ = run_stream(tok, codes, [len(codes)])
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_reuse_after_flush(tok_codes):
    tok, codes = tok_codes
    dec = tok.stream()
    first = np.concatenate([dec.push(codes[:50]), dec.flush()])
    again = np.concatenate([dec.push(codes[:50]), dec.flush()])
    np.testing.assert_array_equal(first, again)


def test_close_to_whole_decode(tok_codes):
    """Random-weight tiny decoder (the worst case: untrained attention is nearly uniform, so it averages over the
    whole window); a one-frame misalignment anywhere would give about 0 dB or less."""
    tok, codes = tok_codes
    whole = tok.decode(codes)
    y, _ = run_stream(tok, codes, [1])
    assert snr_db(whole, y) > 11.0
    wide, _ = run_stream(tok, codes, [1], first=20, chunk=20, left=200, right=20, xfade=4)
    assert snr_db(whole, wide) > 14.0


def test_bad_geometry_and_codes(tok_codes):
    tok, codes = tok_codes
    with pytest.raises(ValueError):
        tok.stream(xfade=8, right=4)
    with pytest.raises(ValueError):
        tok.stream(first=0)
    with pytest.raises(InputError):
        tok.stream().push([tok.codebook_size])


def test_silence_pad_is_context_never_released(tok_codes):
    """``pad`` frames of the silence code stand before and after the codes: the stream releases exactly the
    codes' frames, a short utterance equals ``decode(pad=...)``, and a long one stays close to it."""
    tok, codes = tok_codes
    s = tok.silence_code
    zeros = tok.encode(np.zeros(tok.sample_rate // 2, dtype=np.float32))
    assert s == int(torch.bincount(zeros).argmax())
    whole = tok.decode(codes[:15], pad=6)
    assert whole.shape == (15 * tok.hop,)
    framed = tok.decode(torch.cat([torch.full((6,), s), codes[:15], torch.full((6,), s)]))
    np.testing.assert_array_equal(whole, framed[6 * tok.hop: 21 * tok.hop])
    assert not np.array_equal(whole, tok.decode(codes[:15]))  # the context changes the edges
    dec = tok.stream(pad=6)
    y = np.concatenate([dec.push(codes[:15]), dec.flush()])
    np.testing.assert_array_equal(y, whole)  # one window: exactly decode(pad=6)
    for n in (40, 100):
        y, released = run_stream(tok, codes[:n], [1], pad=6)
        assert y.shape == (n * tok.hop,) and sum(released) > 0
        assert snr_db(tok.decode(codes[:n], pad=6), y) > 11.0
    again = np.concatenate([dec.push(codes[:15]), dec.flush()])  # reset keeps the pad
    np.testing.assert_array_equal(again, whole)
