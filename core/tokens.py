"""Joint-vocabulary token streams: NPY, JSON and the line format, with span validation.

Formats
- NPY: int32, 1-D for one sequence, 2-D padded with -1 for several. The layout fingerprint rides in a
  comment inside the NPY header dict (``{...} # aromni-layout=NAME:HASH``), which ``np.load`` ignores.
- JSON: a list of ids, a list of lists, or ``{"layout": FP, "sequences": [[...], ...]}``.
- Lines: one sequence per line, space-separated ids; an optional first line ``#aromni-layout=FP``.
  Written token by token and flushed, so a consumer sees partial sequences as they are produced.
"""
from __future__ import annotations

import io
import json
import re
import struct
from dataclasses import dataclass
from typing import IO, Iterator

import numpy as np

from .errors import InputError
from .vocab import VocabLayout

NPY_MAGIC = b"\x93NUMPY"
LAYOUT_RE = re.compile(r"aromni-layout=(\S+)")
ID_RE = re.compile(r"-?[0-9]+")


@dataclass
class TokenStream:
    """Sequences of joint-vocabulary ids plus the layout fingerprint they were made for (if known)."""

    sequences: list[list[int]]
    layout: str | None = None


# ----------------------------------------------------------------------------------------------
# NPY
# ----------------------------------------------------------------------------------------------
def _npy_bytes(arr: np.ndarray, fingerprint: str | None) -> bytes:
    """NPY v1 bytes with an optional layout comment in the header."""
    arr = np.ascontiguousarray(arr, dtype="<i4")
    shape = repr(tuple(arr.shape)) if arr.ndim != 1 else f"({arr.shape[0]},)"
    header = "{'descr': '<i4', 'fortran_order': False, 'shape': %s, }" % shape
    if fingerprint:
        header += f" # aromni-layout={fingerprint}"
    # total header length (magic 6 + version 2 + len 2 + header + '\n') must be a multiple of 64
    pad = (64 - (10 + len(header) + 1) % 64) % 64
    header = header + " " * pad + "\n"
    if len(header) > 65535:
        raise ValueError("NPY header too long")
    return NPY_MAGIC + b"\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin1") + arr.tobytes()


def _pad_2d(seqs: list[list[int]]) -> np.ndarray:
    width = max((len(s) for s in seqs), default=0)
    out = np.full((len(seqs), width), -1, dtype=np.int32)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out


def to_npy_bytes(stream: TokenStream) -> bytes:
    seqs = stream.sequences
    arr = np.asarray(seqs[0], dtype=np.int32) if len(seqs) == 1 else _pad_2d(seqs)
    return _npy_bytes(arr, stream.layout)


def _from_npy(data: bytes, source: str) -> TokenStream:
    try:
        hlen = struct.unpack("<H", data[8:10])[0] if data[6] == 1 else struct.unpack("<I", data[8:12])[0]
        hstart = 10 if data[6] == 1 else 12
        header = data[hstart: hstart + hlen].decode("latin1")
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:  # numpy raises many types for damaged files
        raise InputError(f"not a readable NPY token file ({e})", source) from None
    if arr.dtype.kind not in "iu":
        raise InputError(f"NPY token file holds {arr.dtype}, expected integer ids", source)
    m = LAYOUT_RE.search(header)
    if arr.ndim == 1:
        seqs = [arr.tolist()]
    elif arr.ndim == 2:
        seqs = [[int(x) for x in row if x != -1] for row in arr]
    else:
        raise InputError(f"NPY token file has {arr.ndim} dimensions, expected 1 or 2", source)
    return TokenStream(seqs, m.group(1) if m else None)


# ----------------------------------------------------------------------------------------------
# JSON and lines
# ----------------------------------------------------------------------------------------------
def _from_json(text: str, source: str) -> TokenStream:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"invalid JSON token list ({e})", source) from None
    layout = None
    if isinstance(obj, dict):
        layout = obj.get("layout")
        obj = obj.get("sequences", obj.get("tokens"))
    if isinstance(obj, list) and all(type(x) is int for x in obj):
        seqs = [obj]
    elif isinstance(obj, list) and all(isinstance(x, list) and all(type(y) is int for y in x) for x in obj):
        seqs = obj
    else:
        raise InputError("JSON tokens must be a list of ints, a list of lists of ints, or "
                         '{"layout": ..., "sequences": [...]}', source)
    return TokenStream([list(map(int, s)) for s in seqs], layout)


def _parse_line(line: str, source: str, lineno: int) -> list[int]:
    out = []
    for t in line.split():
        if not ID_RE.fullmatch(t):  # plain ASCII decimal (int() would also take "1_000" or "²")
            raise InputError(f"line {lineno}: {t!r} is not a token id", source)
        out.append(int(t))
    return out


def _from_lines(text: str, source: str) -> TokenStream:
    layout, seqs = None, []
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s:
            continue
        if s.startswith("#"):
            m = LAYOUT_RE.search(s)
            if m:
                layout = m.group(1)
            continue
        seqs.append(_parse_line(s, source, n))
    return TokenStream(seqs, layout)


def parse_tokens(data: bytes, source: str = "<stdin>") -> TokenStream:
    """Auto-detect NPY, JSON or the line format."""
    if data.startswith(NPY_MAGIC):
        return _from_npy(data, source)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("not a token file (expected NPY, a JSON list or space-separated ids)", source) from None
    stripped = text.lstrip()
    if not stripped:
        raise InputError("empty token input", source)
    if stripped[0] in "[{":
        return _from_json(stripped, source)
    return _from_lines(text, source)


def read_tokens(path: str, stdin: IO[bytes] | None = None) -> TokenStream:
    """Read a token file (``-`` for stdin)."""
    if path == "-":
        import sys
        data = (stdin or sys.stdin.buffer).read()
        return parse_tokens(data, "<stdin>")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise InputError(e.strerror or str(e), path) from None
    return parse_tokens(data, path)


def iter_line_sequences(stream: IO[bytes], source: str = "<stdin>") -> Iterator[tuple[list[int], str | None]]:
    """Yield (sequence, layout fingerprint) per line as lines arrive on a pipe."""
    layout = None
    for n, raw in enumerate(stream, 1):
        s = raw.decode("utf-8", "replace").strip()
        if not s:
            continue
        if s.startswith("#"):
            m = LAYOUT_RE.search(s)
            layout = m.group(1) if m else layout
            continue
        yield _parse_line(s, source, n), layout


def format_lines(stream: TokenStream) -> str:
    out = []
    if stream.layout:
        out.append(f"#aromni-layout={stream.layout}")
    out += [" ".join(map(str, s)) for s in stream.sequences]
    return "\n".join(out) + "\n"


def write_tokens(stream: TokenStream, path: str, fmt: str | None = None, out: IO[bytes] | None = None) -> None:
    """Write tokens to ``path`` (``-``: ``out``). Format from ``fmt`` or the suffix (.npy/.json, else lines)."""
    fmt = fmt or ("npy" if path.endswith(".npy") else "json" if path.endswith(".json") else "lines")
    if fmt == "npy":
        data = to_npy_bytes(stream)
    elif fmt == "json":
        seqs = stream.sequences[0] if len(stream.sequences) == 1 else stream.sequences
        data = (json.dumps({"layout": stream.layout, "sequences": stream.sequences}) if stream.layout
                else json.dumps(seqs)).encode() + b"\n"
    elif fmt == "lines":
        data = format_lines(stream).encode()
    else:
        raise InputError(f"unknown token format {fmt!r} (npy, json, lines)")
    if path == "-":
        import sys
        out = out or sys.stdout.buffer
        out.write(data)
        out.flush()
    else:
        from .outputs import atomic_file

        with atomic_file(path) as f:
            f.write(data)


class LineWriter:
    """Streams sequences in the line format, flushing every token."""

    def __init__(self, out: IO[bytes], layout: str | None = None):
        self.out, self._started = out, False
        if layout:
            out.write(f"#aromni-layout={layout}\n".encode())
            out.flush()

    def token(self, tok: int) -> None:
        self.out.write((f" {tok}" if self._started else str(tok)).encode())
        self._started = True
        self.out.flush()

    def tokens(self, toks) -> None:
        for t in toks:
            self.token(int(t))

    def end(self) -> None:
        self.out.write(b"\n")
        self.out.flush()
        self._started = False


# ----------------------------------------------------------------------------------------------
# Spans and validation
# ----------------------------------------------------------------------------------------------
@dataclass
class Segment:
    kind: str  # "text" | "image" | "audio" | "special"
    ids: list[int]  # for image/audio: the ids *inside* the markers; for text/special: the ids themselves

    def codes(self, layout: VocabLayout) -> list[int]:
        if self.kind == "image":
            return [layout.image_code(t) for t in self.ids]
        if self.kind == "audio":
            return [layout.audio_code(t) for t in self.ids]
        raise ValueError("only image and audio segments have codes")


def split_segments(ids: list[int], layout: VocabLayout, source: str = "token stream",
                   allow_open_end: bool = False, tolerant: bool = False) -> list[Segment]:
    """Split a stream into text / image / audio / special segments.

    Strict (the default): raises InputError on ids outside the vocabulary, a wrong-modality id inside a span,
    a close marker with no open span, an image code outside an image span, or an unterminated span (unless
    ``allow_open_end``: a stream still being generated).

    ``tolerant`` (a model's response, which may be cut off or malformed): ids outside the vocabulary and image
    codes outside an image span are dropped, a span ends at its first id of another kind, an unterminated span
    is kept, and a stray close marker is a special token. Nothing raises.
    """
    segs: list[Segment] = []
    sp = layout.specials
    i, n = 0, len(ids)
    open_end = allow_open_end or tolerant

    def push(kind, tok):
        if segs and segs[-1].kind == kind:
            segs[-1].ids.append(tok)
        else:
            segs.append(Segment(kind, [tok]))

    while i < n:
        t = ids[i]
        if not 0 <= t < layout.vocab_size:
            if tolerant:
                i += 1
                continue
            raise InputError(f"token {t} at position {i} is outside the vocabulary (0..{layout.vocab_size - 1})",
                             source)
        if t in (sp["boi"], sp["boa"]):
            image = t == sp["boi"]
            end, ok = (sp["eoi"], layout.is_image) if image else (sp["eoa"], layout.is_audio)
            what = "image" if image else "audio"
            j, body = i + 1, []
            while j < n and ids[j] != end:
                if not ok(ids[j]):
                    if tolerant:
                        break
                    raise InputError(f"token {ids[j]} at position {j} is not an {what} code, inside the {what} span "
                                     f"opened at position {i}", source)
                body.append(ids[j])
                j += 1
            if j >= n and not open_end:
                raise InputError(f"{what} span opened at position {i} is never closed", source)
            segs.append(Segment(what, body))
            i = j + (1 if j < n and ids[j] == end else 0)
            continue
        if t in (sp["eoi"], sp["eoa"]) and not tolerant:
            raise InputError(f"token {t} at position {i} closes a span that was never opened", source)
        if layout.is_image(t):
            if tolerant:
                i += 1
                continue
            raise InputError(f"image code {t} at position {i} outside an image span", source)
        if layout.is_audio(t):
            # A bare run of audio ids is accepted as speech (the reference chat parser does the same).
            j = i
            while j < n and layout.is_audio(ids[j]):
                j += 1
            segs.append(Segment("audio", ids[i:j]))
            i = j
            continue
        push("text" if layout.is_text(t) else "special", t)
        i += 1
    return segs


def cut_at_stop(ids: list[int], layout: VocabLayout) -> list[int]:
    """``ids`` up to (not including) the first ``</s>`` or ``<eom>``."""
    for i, t in enumerate(ids):
        if t in (layout.eos, layout.eom):
            return ids[:i]
    return ids


def parse_response(ids: list[int], layout: VocabLayout) -> dict:
    """A model's response (cut at its first stop token, parsed tolerantly) as ``{"text": text ids,
    "transcript": text ids between <-Ins-> and <-Res->, "images": [codes], "speech": [codes]}``; empty image
    and speech spans are left out."""
    text: list[int] = []
    transcript: list[int] = []
    images: list[list[int]] = []
    speech: list[list[int]] = []
    in_ins = False
    for seg in split_segments(cut_at_stop(ids, layout), layout, tolerant=True):
        if seg.kind == "image" and seg.ids:
            images.append(seg.codes(layout))
        elif seg.kind == "audio" and seg.ids:
            speech.append(seg.codes(layout))
        elif seg.kind == "text":
            (transcript if in_ins else text).extend(seg.ids)
        elif seg.kind == "special":
            for t in seg.ids:
                in_ins = True if t == layout.ins else False if t == layout.res else in_ins
    return {"text": text, "transcript": transcript, "images": images, "speech": speech}


def whole_image(codes: list[int], layout: VocabLayout) -> list[int]:
    """``codes`` cut or zero-padded to one image (short only when the context ran out)."""
    c = list(codes[: layout.image_tokens])
    return c + [0] * (layout.image_tokens - len(c))


def image_codes_of(ids: list[int], layout: VocabLayout) -> list[int]:
    """Every image code of a response, as one whole image."""
    return whole_image([layout.image_code(t) for t in ids if layout.is_image(t)], layout)


def speech_codes_of(ids: list[int], layout: VocabLayout) -> list[int]:
    """The codes of every speech span of a response, joined."""
    return [c for seg in parse_response(ids, layout)["speech"] for c in seg]


def validate(ids: list[int], layout: VocabLayout, source: str = "token stream") -> None:
    split_segments(ids, layout, source)


def image_block(codes, layout: VocabLayout) -> list[int]:
    """``<boi> ids <eoi>`` for one image's codes."""
    return [layout.boi] + [layout.image_id(int(c)) for c in codes] + [layout.eoi]


def audio_block(codes, layout: VocabLayout) -> list[int]:
    """``<boa> ids <eoa>`` for one clip's codes."""
    return [layout.boa] + [layout.audio_id(int(c)) for c in codes] + [layout.eoa]
