"""Upscaling generated pictures for viewing: a small model's 32x32 image is written larger.

``nearest`` repeats each pixel (the picture exactly as generated, sharp blocks, small PNGs); ``lanczos`` smooths
(Pillow's Lanczos filter). By default an image is scaled by the smallest whole factor that makes its shorter side at
least ``MIN_SIDE`` pixels; an image already that large is left as is.
"""
from __future__ import annotations

import io

from .errors import AromniError

MIN_SIDE = 256
FILTERS = ("nearest", "lanczos")
MAX_SCALE = 64
MAX_SIZE = 8192


def check(scale: int | None, size: int | None, method: str) -> None:
    """Refuse bad settings before any work (errors name the options)."""
    if scale is not None and size is not None:
        raise AromniError("give either scale or size, not both")
    if scale is not None and not (isinstance(scale, int) and 1 <= scale <= MAX_SCALE):
        raise AromniError(f"scale must be a whole number from 1 to {MAX_SCALE} (got {scale!r})")
    if size is not None and not (isinstance(size, int) and 1 <= size <= MAX_SIZE):
        raise AromniError(f"size must be a whole number of pixels from 1 to {MAX_SIZE} (got {size!r})")
    if method not in FILTERS:
        raise AromniError(f"unknown upscaling filter {method!r} (known: {', '.join(FILTERS)})")


def target(width: int, height: int, scale: int | None = None, size: int | None = None) -> tuple[int, int]:
    """Output (width, height): ``size`` for the longer side (aspect kept), else ``scale`` times, else the default
    (the smallest whole factor giving a shorter side of at least MIN_SIDE)."""
    if size is not None:
        k = size / max(width, height)
        return max(1, round(width * k)), max(1, round(height * k))
    if scale is None:
        scale = max(1, -(-MIN_SIDE // max(1, min(width, height))))
    return width * scale, height * scale


def upscale(img, scale: int | None = None, size: int | None = None, method: str = "nearest"):
    """A PIL image resized to ``target`` with ``method`` (the same image when the size does not change)."""
    from PIL import Image

    check(scale, size, method)
    w, h = target(img.width, img.height, scale, size)
    if (w, h) == img.size:
        return img
    return img.resize((w, h), Image.Resampling.NEAREST if method == "nearest" else Image.Resampling.LANCZOS)


def upscale_png(data: bytes, scale: int | None = None, size: int | None = None, method: str = "nearest") -> bytes:
    """PNG bytes in, PNG bytes of the upscaled picture out (the same bytes when the size does not change)."""
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    out = upscale(img, scale, size, method)
    if out is img:
        return data
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return buf.getvalue()
