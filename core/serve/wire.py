"""What travels between ``aromni`` commands (core.client) and the server: decoding options and audio.

Decoding options travel as the overrides the caller chose (``DecodeOptions.explicit``) plus ``compat``, so
the server rebuilds exactly the options the command would have used in-process. Audio travels as s16le PCM;
:func:`from_pcm16` turns it back into floats that ``audio_io.to_pcm16`` maps to the same bytes.
"""
from __future__ import annotations

import base64
import binascii
import io

import numpy as np

from ..decoding import DecodeOptions, options_for
from ..errors import InputError
from .http import ApiError

# options a request may not set: the server decides how it batches and compiles
SERVER_OWNED = ("batch_size", "compile", "task")


def options_payload(opts: DecodeOptions) -> dict:
    """The overrides ``opts`` was made with, as JSON."""
    out = {k: getattr(opts, k) for k in sorted(opts.explicit) if k not in SERVER_OWNED}
    out = {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
    if opts.compat:
        out["compat"] = True
    return out


def options_from_payload(task: str, payload, **fixed) -> DecodeOptions:
    """DecodeOptions for ``task`` from a request's ``options`` object (then ``fixed`` overrides)."""
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        raise InputError("options must be a JSON object")
    kw = {k: v for k, v in payload.items() if k not in SERVER_OWNED}
    compat = kw.pop("compat", False)
    if not isinstance(compat, bool):
        raise InputError("options.compat must be true or false")
    kw.update({k: v for k, v in fixed.items() if v is not None})
    from dataclasses import fields
    types = {f.name: str(f.type) for f in fields(DecodeOptions)}
    for k, v in kw.items():
        if k not in types:
            raise InputError(f"unknown decoding option {k!r}")
        if isinstance(v, list):
            kw[k] = tuple(tuple(x) if isinstance(x, list) else x for x in v)
        elif v is not None and not isinstance(v, (bool, int, float, str)):
            raise InputError(f"options.{k}: expected a number, string or boolean")
        _check_type(k, types[k], kw[k])
    try:
        return options_for(task, compat=compat, **kw)
    except TypeError as e:
        raise InputError(str(e)) from None


def _check_type(name: str, declared: str, value) -> None:
    if value is None:
        return
    if declared.startswith("bool") and not isinstance(value, bool):
        raise InputError(f"options.{name}: expected true or false")
    if declared.startswith("int") and (isinstance(value, bool) or not isinstance(value, int)):
        raise InputError(f"options.{name}: expected an integer")
    if declared.startswith("float") and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise InputError(f"options.{name}: expected a number")


def pcm16(wav: np.ndarray) -> bytes:
    from ..audio_io import to_pcm16
    return to_pcm16(wav)


def from_pcm16(data: bytes) -> np.ndarray:
    """s16le bytes -> float32 samples that ``to_pcm16`` writes back as the same bytes."""
    return np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2").astype(np.float32) / np.float32(32767.0)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str, what: str) -> bytes:
    """Base64 or a ``data:...;base64,`` URI -> bytes."""
    if text.startswith("data:"):
        head, sep, text = text.partition(",")
        if not sep or not head.endswith(";base64"):
            raise ApiError(400, f"{what}: expected a base64 data: URI", "invalid_data_uri")
    elif text.startswith(("http://", "https://")):
        raise ApiError(400, f"{what}: URLs are not fetched; send the bytes as a base64 data: URI", "url_not_supported")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{what}: not valid base64", "invalid_base64") from None


def png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def wav_bytes(wav, sr: int) -> bytes:
    from ..audio_io import wav_header
    data = pcm16(wav)
    return wav_header(len(data) // 2, sr) + data
