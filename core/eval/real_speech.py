"""Real human speech for evaluation, from Debian packages: an ASR manifest and the codec's real-speech ceiling.

Sources (install with ``apt-get install asterisk-core-sounds-en-wav asterisk-core-sounds-en pocketsphinx-testdata``):

- Asterisk core sounds: one female speaker, 8 kHz telephone speech. ``digits/``, ``letters/`` and ``phonetic/``
  are single words or short phrases (numbers, spelled letters, the NATO alphabet): group ``asterisk words``;
  the top-level prompts of four words or more are everyday sentences: group ``asterisk prompts``.
- pocketsphinx-testdata: five LibriVox read-speech clips at 16 kHz (group ``librivox``).

These recordings are for measuring only: nothing in aromni trains on them.
"""
from __future__ import annotations

import gzip
import json
import os
import re
from dataclasses import dataclass

import numpy as np

ASTERISK_SOUNDS = "/usr/share/asterisk/sounds/en_US_f_Allison"
ASTERISK_TEXT = "/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
LIBRIVOX = "/usr/share/pocketsphinx/test/data/librivox"
WORD_FOLDERS = ("digits", "letters", "phonetic")
GROUPS = ("asterisk words", "asterisk prompts", "librivox")
PACKAGES = "asterisk-core-sounds-en-wav asterisk-core-sounds-en pocketsphinx-testdata"


@dataclass
class Clip:
    audio: str
    text: str
    group: str


def available() -> str | None:
    """Why the real-speech clips cannot be read here (None when they can)."""
    for path in (ASTERISK_SOUNDS, ASTERISK_TEXT, LIBRIVOX):
        if not os.path.exists(path):
            return f"{path} is missing: apt-get install {PACKAGES}"
    return None


def _asterisk(min_prompt_words: int) -> list[Clip]:
    with gzip.open(ASTERISK_TEXT, "rt", encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    clips = []
    for line in lines:
        name, sep, text = line.partition(":")
        text = text.strip()
        if not sep or line.startswith(";") or not text or "[" in text:  # comments, tones ("[beep]")
            continue
        folder = name.split("/")[0] if "/" in name else ""
        wav = os.path.join(ASTERISK_SOUNDS, name + ".wav")
        if not os.path.isfile(wav):
            continue
        if folder in WORD_FOLDERS:
            clips.append(Clip(wav, text, "asterisk words"))
        elif not folder and len(text.split()) >= min_prompt_words:
            clips.append(Clip(wav, text, "asterisk prompts"))
    return clips


def _librivox() -> list[Clip]:
    clips = []
    with open(os.path.join(LIBRIVOX, "transcription"), encoding="utf-8") as f:
        for line in f:
            m = re.match(r"\s*<s>(.*)</s>\s*\((\S+)\)", line)
            if m and os.path.isfile(os.path.join(LIBRIVOX, m.group(2) + ".wav")):
                clips.append(Clip(os.path.join(LIBRIVOX, m.group(2) + ".wav"), m.group(1).strip(), "librivox"))
    return clips


def clips(groups: tuple[str, ...] = GROUPS, min_prompt_words: int = 4) -> list[Clip]:
    """Every installed clip of ``groups``, in a fixed order (file order of the packages' transcripts)."""
    why = available()
    if why:
        raise FileNotFoundError(why)
    out = _asterisk(min_prompt_words) + _librivox()
    return [c for c in out if c.group in groups]


def write_manifest(path: str, items: list[Clip]) -> None:
    """An ``aromni eval --task asr --split real`` manifest of ``items``, each line with its ``group``."""
    with open(path, "w", encoding="utf-8") as f:
        for i, c in enumerate(items):
            f.write(json.dumps({"task": "asr", "split": "real", "id": f"real-{i}", "audio": c.audio,
                                "text": c.text, "group": c.group}) + "\n")


def codec_ceiling(codec, judge, items: list[Clip], unquantised: bool = False) -> dict:
    """The judge's WER on the original clips and on the codec's reconstructions of them, per group.

    ``codec`` is a loaded speech tokenizer (encode/decode at ``codec.sample_rate``), ``judge`` a
    core.eval.judge Judge. The difference is what the codec alone loses on real speech. ``unquantised`` also
    measures the decoder's output for the encoder's latents without the codebook (``wer_unquantised``): what
    encoder and decoder lose before quantisation does."""
    from ..audio_io import load_audio
    from .wer import corpus_wer

    sr = codec.sample_rate
    out: dict = {}
    for group in sorted({c.group for c in items}):
        sel = [c for c in items if c.group == group]
        orig = [load_audio(c.audio, sr) for c in sel]
        recon = [np.asarray(codec.decode(codec.encode(w)), dtype=np.float32).reshape(-1) for w in orig]
        refs = [c.text for c in sel]
        w_orig = corpus_wer(refs, judge.transcribe(orig, sr)).wer
        w_rec = corpus_wer(refs, judge.transcribe(recon, sr)).wer
        out[group] = {"n": len(sel), "wer_original": w_orig, "wer_reconstructed": w_rec,
                      "points_lost": None if w_rec is None or w_orig is None else 100.0 * (w_rec - w_orig)}
        if unquantised:
            out[group]["wer_unquantised"] = corpus_wer(refs, judge.transcribe([codec.autoencode(w) for w in orig],
                                                                              sr)).wer
    return out
