"""Audio I/O without torchaudio: soundfile to read, soxr to resample, WAV/raw writers that can stream."""
from __future__ import annotations

import io
import struct
from typing import IO

import numpy as np

from .errors import InputError

MAX_CHANNELS = 8


def load_audio(src: str | bytes, sample_rate: int, source: str | None = None, resampler: str = "soxr") -> np.ndarray:
    """Any soundfile-readable file (path, or bytes for stdin) -> mono float32 at ``sample_rate``.

    Channels are averaged (as the reference's convert_audio), then resampled by ``resampler``: "soxr" (high
    quality) or "sinc" (torchaudio's Resample, as the reference WavTokenizer; see core/resample.py).
    """
    import soundfile as sf

    name = source or (src if isinstance(src, str) else "<stdin>")
    try:
        f = io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src
        data, sr = sf.read(f, dtype="float32", always_2d=True)
    except FileNotFoundError:
        raise InputError("no such file", name) from None
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"not a readable audio file ({msg})", name) from None
    if data.shape[0] == 0:
        raise InputError("audio file holds no samples", name)
    if data.shape[1] > MAX_CHANNELS:
        raise InputError(f"audio has {data.shape[1]} channels; at most {MAX_CHANNELS} are accepted", name)
    if not np.isfinite(data).all():
        raise InputError("audio contains NaN or infinite samples", name)
    mono = data.mean(axis=1)
    if sr != sample_rate:
        from .resample import resample

        mono = resample(mono, sr, sample_rate, resampler)
    return np.ascontiguousarray(mono, dtype=np.float32)


def to_pcm16(wav: np.ndarray) -> bytes:
    """float [-1, 1] -> little-endian int16 bytes (clipped)."""
    return (np.clip(np.asarray(wav, dtype=np.float32), -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


UNKNOWN_SIZE = 0xFFFFFFFF


def wav_header(n_samples: int | None, sample_rate: int, channels: int = 1) -> bytes:
    """44-byte PCM16 WAV header. ``n_samples=None`` writes the 0xFFFFFFFF "until EOF" sizes used for pipes
    (ffmpeg, sox and opus-tools read it; docs/decoding.md)."""
    block = 2 * channels
    if n_samples is None:
        riff, data = UNKNOWN_SIZE, UNKNOWN_SIZE
    else:
        data = n_samples * block
        riff = 36 + data
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, channels, sample_rate,
            sample_rate * block, block, 16) + b"data" + struct.pack("<I", data))


class AudioWriter:
    """Writes mono PCM16 progressively as WAV or raw s16le.

    On a seekable file the WAV header is patched with the exact size at close; on a pipe the header carries
    the unknown-length sizes.
    """

    def __init__(self, out: IO[bytes], sample_rate: int, raw: bool = False):
        self.out, self.sr, self.raw = out, sample_rate, raw
        self.n = 0
        try:
            self.seekable = out.seekable()
        except (AttributeError, ValueError, OSError):
            self.seekable = False
        if not raw:
            self.start = out.tell() if self.seekable else 0
            out.write(wav_header(0 if self.seekable else None, sample_rate))

    def write(self, wav: np.ndarray) -> None:
        if len(wav) == 0:
            return
        self.out.write(to_pcm16(wav))
        self.out.flush()
        self.n += len(wav)

    def close(self) -> None:
        if not self.raw and self.seekable:
            end = self.out.tell()
            self.out.seek(self.start)
            self.out.write(wav_header(self.n, self.sr))
            self.out.seek(end)
        self.out.flush()


def write_wav(path: str, wav: np.ndarray, sample_rate: int) -> None:
    with open(path, "wb") as f:
        w = AudioWriter(f, sample_rate)
        w.write(wav)
        w.close()
