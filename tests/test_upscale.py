"""Upscaling generated pictures for viewing (core/upscale.py)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from aromni.core import upscale as U
from aromni.core.errors import AromniError


def picture(w: int = 32, h: int = 32) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_default_reaches_256_px_by_a_whole_factor():
    assert U.target(32, 32) == (256, 256)
    assert U.target(16, 16) == (256, 256)
    assert U.target(100, 100) == (300, 300)  # ceil(256 / 100) = 3
    assert U.target(512, 512) == (512, 512)  # already large: unchanged
    assert U.target(32, 32, scale=1) == (32, 32)
    assert U.target(64, 32, size=128) == (128, 64)  # longer side, aspect kept


def test_nearest_repeats_pixels_exactly():
    im = picture()
    big = U.upscale(im, scale=4)
    assert big.size == (128, 128)
    a, b = np.asarray(im), np.asarray(big)
    assert np.array_equal(b[::4, ::4], a) and np.array_equal(b[3::4, 3::4], a)
    assert U.upscale(im, scale=1) is im


def test_lanczos_smooths():
    im = picture()
    big = np.asarray(U.upscale(im, scale=4, method="lanczos")).astype(int)
    assert big.shape == (128, 128, 3)
    assert not np.array_equal(big[::4, ::4], np.asarray(im))
    # means of each block stay close to the source pixel on average
    blocks = big.reshape(32, 4, 32, 4, 3).mean(axis=(1, 3))
    assert np.abs(blocks - np.asarray(im)).mean() < 30


def test_png_round_trip():
    buf = io.BytesIO()
    picture().save(buf, format="PNG")
    data = buf.getvalue()
    out = Image.open(io.BytesIO(U.upscale_png(data)))
    assert out.format == "PNG" and out.size == (256, 256)
    assert U.upscale_png(data, scale=1) == data


@pytest.mark.parametrize("kw", [dict(scale=0), dict(scale=65), dict(scale=2.5), dict(size=0), dict(size=9000),
                                dict(scale=2, size=64), dict(method="bicubic")])
def test_bad_settings(kw):
    with pytest.raises(AromniError):
        U.check(kw.get("scale"), kw.get("size"), kw.get("method", "nearest"))
