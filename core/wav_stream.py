"""Streamed PCM16 output from bytes, as a server sends them: the bytes ``audio_io.AudioWriter`` writes for the
same samples, without numpy (so a command that only relays a server's audio imports no array code)."""
from __future__ import annotations

import struct
from typing import IO

UNKNOWN_SIZE = 0xFFFFFFFF  # the "until EOF" sizes of a WAV on a pipe


def wav_header(n_samples: int | None, sample_rate: int) -> bytes:
    """44-byte mono PCM16 WAV header (``n_samples=None``: unknown length), as ``audio_io.wav_header``."""
    data = UNKNOWN_SIZE if n_samples is None else 2 * n_samples
    riff = UNKNOWN_SIZE if n_samples is None else 36 + data
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate,
            2 * sample_rate, 2, 16) + b"data" + struct.pack("<I", data))


class Pcm16Writer:
    """Writes s16le mono bytes progressively as WAV or raw PCM. Nothing is written before the first samples
    (or ``close``); on a seekable file the header is patched with the exact length at ``close``."""

    def __init__(self, out: IO[bytes], sample_rate: int, raw: bool = False):
        self.out, self.sr, self.raw = out, sample_rate, raw
        self.n = 0  # samples written
        self.started = False
        try:
            self.seekable = out.seekable()
        except (AttributeError, ValueError, OSError):
            self.seekable = False

    def _start(self) -> None:
        if not self.started and not self.raw:
            self.start = self.out.tell() if self.seekable else 0
            self.out.write(wav_header(0 if self.seekable else None, self.sr))
        self.started = True

    def write(self, pcm: bytes) -> None:
        pcm = pcm[: len(pcm) // 2 * 2]
        if not pcm:
            return
        self._start()
        self.out.write(pcm)
        self.out.flush()
        self.n += len(pcm) // 2

    def close(self) -> None:
        self._start()
        if not self.raw and self.seekable:
            end = self.out.tell()
            self.out.seek(self.start)
            self.out.write(wav_header(self.n, self.sr))
            self.out.seek(end)
        self.out.flush()
