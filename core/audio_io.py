"""Audio I/O without torchaudio: soundfile to read, soxr to resample, WAV/raw writers that can stream."""
from __future__ import annotations

import contextlib
import io
import signal
import struct
import threading
from collections.abc import Iterator

import numpy as np

from .outputs import atomic_file
from .wav_stream import Pcm16Writer
from .errors import InputError

MAX_CHANNELS = 8
# sizes a streamed file writes when its length is not known yet: 0 and all-ones (RIFF, AU, W64), and the
# "as large as a 32-bit RIFF may be" placeholders that espeak-ng (0x7FFFF000) and other pipe writers
# (0x7FFFFFFF) put in a WAV header written to stdout
_UNKNOWN = (0, 0x7FFFF000, 0x7FFFFFFF, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF)


def _riff_data(data: bytes) -> tuple[str, int, int] | None:
    """WAV / RF64 / RIFX: (format, declared, present) bytes of the data chunk."""
    big = data[:4] == b"RIFX"
    fmt = "RF64" if data[:4] == b"RF64" else "WAV"
    ds64 = None
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack(">I" if big else "<I", data[pos + 4:pos + 8])[0]
        if cid == b"ds64" and pos + 24 <= len(data):
            ds64 = struct.unpack("<Q", data[pos + 16:pos + 24])[0]
        if cid == b"data":
            if size == 0xFFFFFFFF and ds64 is not None:
                size = ds64
            return fmt, size, len(data) - pos - 8
        pos += 8 + size + (size & 1)
    return None


def _aiff_data(data: bytes) -> tuple[str, int, int] | None:
    """AIFF / AIFF-C: declared and present bytes of the SSND chunk."""
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack(">I", data[pos + 4:pos + 8])[0]
        if cid == b"SSND":
            return "AIFF", size, len(data) - pos - 8
        pos += 8 + size + (size & 1)
    return None


def _au_data(data: bytes) -> tuple[str, int, int] | None:
    offset, size = struct.unpack(">II", data[4:12])
    return "AU", size, len(data) - offset


_W64_RIFF = b"riff\x2e\x91\xcf\x11\xa5\xd6\x28\xdb\x04\xc1\x00\x00"


def _w64_data(data: bytes) -> tuple[str, int, int] | None:
    pos = 40  # riff GUID + size + wave GUID
    while pos + 24 <= len(data):
        guid, size = data[pos:pos + 16], struct.unpack("<Q", data[pos + 16:pos + 24])[0]
        if guid[:4] == b"data":
            return "W64", size - 24, len(data) - pos - 24
        pos += max(24, (size + 7) // 8 * 8)
    return None


def truncation(data: bytes) -> str | None:
    """Why an audio file in a container that declares its length (WAV, RF64, AIFF, AU, W64) is cut short,
    else None. libsndfile reads such files without complaint, returning only the samples present; files whose
    length is unknown (a WAV streamed to a pipe) are never truncated."""
    if len(data) < 12:
        return None
    if data[:4] in (b"RIFF", b"RIFX", b"RF64") and data[8:12] == b"WAVE":
        found = _riff_data(data)
    elif data[:4] == b"FORM" and data[8:12] in (b"AIFF", b"AIFC"):
        found = _aiff_data(data)
    elif data[:4] == b".snd" and len(data) >= 24:
        found = _au_data(data)
    elif data[:16] == _W64_RIFF:
        found = _w64_data(data)
    else:
        return None
    if found is None:
        return None
    fmt, declared, have = found
    if declared in _UNKNOWN or have >= declared:
        return None
    return (f"truncated {fmt} file: its header declares {declared} bytes of audio, the file holds {have} "
            f"({100 * have / declared:.0f}%)")


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C until the block ends, then raise KeyboardInterrupt.

    soundfile reads in-memory audio through a Python callback; a KeyboardInterrupt raised inside it is swallowed
    by cffi and the read just ends early, which would be reported as a truncated file.
    """
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    got: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if got:
        raise KeyboardInterrupt


def load_audio(src: str | bytes, sample_rate: int, source: str | None = None, resampler: str = "soxr") -> np.ndarray:
    """Any soundfile-readable file (path, or bytes for stdin) -> mono float32 at ``sample_rate``.

    Channels are averaged (as the reference's convert_audio), then resampled by ``resampler``: "soxr" (high
    quality) or "sinc" (torchaudio's Resample, as the reference WavTokenizer; see core/resample.py).
    """
    import soundfile as sf

    name = source or (src if isinstance(src, str) else "<stdin>")
    if isinstance(src, str):
        try:
            with open(src, "rb") as fh:
                src = fh.read()
        except FileNotFoundError:
            raise InputError("no such file", name) from None
        except OSError as e:
            raise InputError(f"cannot read ({e.strerror or e})", name) from None
    if len(src) == 0:
        raise InputError("empty file", name)
    why = truncation(bytes(src))
    if why:
        raise InputError(why, name)
    try:
        with _sigint_deferred(), sf.SoundFile(io.BytesIO(src)) as f:
            declared = f.frames
            data = f.read(dtype="float32", always_2d=True)
            sr = f.samplerate
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "lost sync" in msg or "malformed" in msg:
            msg += "; the file may be truncated"
        raise InputError(f"not a readable audio file ({msg})", name) from None
    # an MP3 whose header counts more frames than its data holds (1% slack: some headers only estimate)
    if data.shape[0] < 0.99 * declared:
        raise InputError(f"truncated audio: decoded {data.shape[0]} of the {declared} frames the file declares "
                         f"({data.shape[0] / sr:.2f} of {declared / sr:.2f} s)", name)
    if data.shape[0] == 0:
        raise InputError("audio file holds no samples (empty, or truncated before its first)", name)
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


class AudioWriter(Pcm16Writer):
    """Writes mono float audio progressively as PCM16 WAV or raw s16le (``wav_stream.Pcm16Writer`` over
    ``to_pcm16``): nothing before the first samples (or ``close``), so a caller that finds no audio can fail
    without leaving a header-only file; on a seekable file the WAV header is patched with the exact size at
    close, on a pipe it carries the unknown-length sizes."""

    def write(self, wav: np.ndarray) -> None:  # type: ignore[override]
        if len(wav):
            super().write(to_pcm16(wav))


def write_wav(path: str, wav: np.ndarray, sample_rate: int) -> None:
    """A mono PCM16 WAV file, written all or nothing."""
    with atomic_file(path) as f:
        w = AudioWriter(f, sample_rate)
        w.write(wav)
        w.close()
