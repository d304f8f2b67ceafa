"""`aromni detok`: token stream -> text on stdout, images as PNG, speech as WAV."""
from __future__ import annotations

import io
import sys
from dataclasses import dataclass, field
from typing import Optional

import typer
from typing_extensions import Annotated

from aromni.commands._common import Threads
from aromni.commands._common import (Device, Model, Quiet, atomic_file, binary_output, confined_path, log,
                                     make_dir)
from aromni.core.errors import AromniError, InputError


@dataclass
class Media:
    kind: str  # "image" | "audio"
    name: str  # file name inside --out-dir
    codes: list[int]


@dataclass
class Plan:
    lines: list[str] = field(default_factory=list)  # decoded text, one per sequence
    media: list[Media] = field(default_factory=list)

    @property
    def has_text(self) -> bool:
        return any(self.lines)


def _special_name(tok: int, omni) -> str:
    from aromni.core.vocab import SPECIAL_TEXT

    name = omni.vocab.special_name(tok)
    if name is not None:
        return SPECIAL_TEXT[name]
    vocab_name = getattr(omni.text, "token_name", None)
    return (vocab_name(tok) if vocab_name else None) or f"<id:{tok}>"


def plan_tokens(stream, omni, source: str, show_special: bool, quiet: bool) -> Plan:
    """Split each sequence into segments: text pieces joined into a line, image/audio spans to write."""
    from aromni.core.tokens import split_segments

    v, plan = omni.vocab, Plan()
    for i, ids in enumerate(stream.sequences):
        src = source if len(stream.sequences) == 1 else f"{source} (sequence {i})"
        segs = split_segments(ids, v, src)
        parts, pos, n_img, n_aud = [], 0, 0, 0
        for seg in segs:
            if seg.kind == "text":
                if omni.text is None:
                    raise AromniError(f"model {omni.source or '?'} has no text tokenizer; cannot decode text")
                parts.append(omni.text.decode(seg.ids))
                pos += len(seg.ids)
            elif seg.kind == "special":
                if show_special:
                    parts += [_special_name(t, omni) for t in seg.ids]
                pos += len(seg.ids)
            else:
                image = seg.kind == "image"
                marked = image or ids[pos] == v.boa  # audio may come as a bare run of ids
                pos += len(seg.ids) + (2 if marked else 0)
                j = n_img if image else n_aud
                name = f"seq{i}_img{j}.png" if image else f"seq{i}_audio{j}.wav"
                if not seg.ids:
                    log(f"aromni: warning: {src}: empty {seg.kind} span skipped", quiet)
                    continue
                plan.media.append(Media(seg.kind, name, seg.codes(v)))
                n_img, n_aud = n_img + image, n_aud + (not image)
                if show_special:
                    b, e = ("<boi>", "<eoi>") if image else ("<boa>", "<eoa>") if marked else ("", "")
                    parts.append(f"{b}[{seg.kind} {name}]{e}")
        plan.lines.append("".join(parts))
    return plan


def plan_codes(stream, kind: str, quiet: bool, source: str) -> Plan:
    """Raw codec codes: every sequence is one image or one clip."""
    plan = Plan()
    for i, codes in enumerate(stream.sequences):
        if not codes:
            log(f"aromni: warning: {source}: sequence {i} is empty, skipped", quiet)
            continue
        plan.media.append(Media(kind, f"seq{i}_img0.png" if kind == "image" else f"seq{i}_audio0.wav", codes))
    return plan


def _check_codes(m: Media, size: int, source: str) -> None:
    bad = next((c for c in m.codes if not 0 <= c < size), None)
    if bad is not None:
        raise InputError(f"{m.kind} code {bad} in {m.name.rsplit('.', 1)[0]} is outside the codebook (0..{size - 1})",
                         source)


def render_image(omni, m: Media, source: str, quiet: bool) -> bytes:
    """PNG bytes of one image; pads with the first code or truncates to n_tokens, as the reference does."""
    import torch

    tok = omni.image
    _check_codes(m, tok.codebook_size, source)
    codes, n = list(m.codes), tok.n_tokens
    if len(codes) != n:
        how = "padded by repeating the first code" if len(codes) < n else "truncated"
        log(f"aromni: warning: {m.name}: {len(codes)} image codes, expected {n}; {how}", quiet)
        codes = (codes + [codes[0]] * n)[:n]
    with torch.inference_mode():
        img = tok.decode(torch.tensor([codes], dtype=torch.long))[0]
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def render_audio(omni, m: Media, source: str):
    """Waveform of one clip (the whole segment decoded at once, as the reference)."""
    import torch

    _check_codes(m, omni.speech.codebook_size, source)
    with torch.inference_mode():
        return omni.speech.decode(torch.tensor(m.codes, dtype=torch.long))


def run(
    tokens: Annotated[str, typer.Argument(
        metavar="TOKENS", help="Token file: NPY, JSON or lines of ids; - for stdin.")] = "-",
    out_dir: Annotated[Optional[str], typer.Option(
        "--out-dir", "-d", metavar="DIR",
        help="Write images (seqN_imgK.png) and speech (seqN_audioK.wav) here.")] = None,
    codes: Annotated[Optional[str], typer.Option(
        "--codes", metavar="image|audio",
        help="Input holds raw codec codes, not model ids: 'image' or 'audio' (one per sequence).")] = None,
    show_special: Annotated[bool, typer.Option(
        "--show-special", help="Print control tokens by name and mark where images and speech were.")] = False,
    output: Annotated[str, typer.Option(
        "--output", "-o", help="For a stream of exactly one image (.png) or one clip (.wav) and no text: the file "
                               "to write it to (- for stdout).")] = "-",
    model: Model = None,
    device: Device = "auto",
    quiet: Quiet = False,
    threads: Threads = None,
) -> None:
    """Token stream -> text on stdout (one line per sequence), images as PNG, speech as WAV.

    Images and speech go to --out-dir; without it, a stream holding exactly one image or one clip and no
    text writes that PNG/WAV to stdout, or to -o FILE. The stream's layout fingerprint must match the model's.
    """
    from aromni.core.api import load
    from aromni.core.audio_io import AudioWriter, write_wav
    from aromni.core.tokens import read_tokens

    if codes not in (None, "image", "audio"):
        raise AromniError(f"--codes must be 'image' or 'audio', not {codes!r}")
    if tokens == "-" and (sys.stdin is None or sys.stdin.isatty()):
        raise AromniError("no token stream given: pass a file or pipe it on stdin")
    source = "<stdin>" if tokens == "-" else tokens
    stream = read_tokens(tokens)
    omni = load(model, device=device, model=False)
    omni.vocab.check_compatible(stream.layout, source)
    plan = plan_codes(stream, codes, quiet, source) if codes else plan_tokens(stream, omni, source, show_special, quiet)

    for kind in ("image", "speech"):
        if getattr(omni, kind) is None and any(m.kind == ("image" if kind == "image" else "audio") for m in plan.media):
            raise AromniError(f"model {omni.source or '?'} has no {kind} tokenizer; cannot decode {kind}")

    if output != "-" and (out_dir is not None or len(plan.media) != 1 or plan.has_text):
        raise AromniError(f"-o {output}: takes a stream of exactly one image or one clip and no text (this one holds "
                          f"{len(plan.media)} image(s)/clip(s){' and text' if plan.has_text else ''}); use --out-dir")
    if out_dir is None and plan.media:
        if len(plan.media) == 1 and not plan.has_text:  # the single PNG/WAV is the output
            m = plan.media[0]
            want = ".png" if m.kind == "image" else ".wav"
            if output != "-" and not output.lower().endswith(want):
                raise AromniError(f"-o {output}: the stream holds {'an image' if m.kind == 'image' else 'speech'}, "
                                  f"written as {want[1:].upper()}: name the file *{want}")
            if m.kind == "image":
                data = render_image(omni, m, source, quiet)
                with binary_output(output, "a PNG image") as f:
                    f.write(data)
            else:
                wav = render_audio(omni, m, source)
                with binary_output(output, "WAV audio") as f:
                    w = AudioWriter(f, omni.speech.sample_rate)
                    w.write(wav)
                    w.close()
            return
        n_img = sum(m.kind == "image" for m in plan.media)
        n_aud = len(plan.media) - n_img
        what = [f"{n_img} image(s)" if n_img else "", f"{n_aud} speech clip(s)" if n_aud else "",
                "text" if plan.has_text else ""]
        raise AromniError(f"{source} holds {' and '.join(w for w in what if w)}; pass --out-dir DIR to write images "
                          "and speech (text still goes to stdout)")

    if plan.has_text:
        sys.stdout.write("".join(line + "\n" for line in plan.lines))
        sys.stdout.flush()
    if plan.media:
        make_dir(out_dir)
        for m in plan.media:
            path = confined_path(out_dir, m.name)
            if m.kind == "image":
                data = render_image(omni, m, source, quiet)
                with atomic_file(path) as f:
                    f.write(data)
            else:
                write_wav(path, render_audio(omni, m, source), omni.speech.sample_rate)
            log(path, quiet)
