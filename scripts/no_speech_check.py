"""How often `aromni asr`'s no-speech check (core/levels.py ``no_speech``) fires, on speech and on sounds that
are not speech.

    python scripts/no_speech_check.py [--data corpus/heldout.jsonl] [--n 300] [--snr 20,10,6,3,0] [--seed 0]

Speech: the audio of a corpus manifest (``--data``), every recording of Debian's Asterisk prompts package that its
transcript gives words for (its ``silence/`` files and the sounds the transcript writes in brackets, tones, beeps
and monkeys, are counted apart, as non-speech) and the LibriVox clips of
``pocketsphinx-testdata`` (groups whose package is missing are left out with a note); then up to ``--n`` clips of
the manifest and of the Asterisk words and prompts with white noise added at each signal-to-noise ratio of
``--snr``. Non-speech: digital silence, hiss, steady static at three levels, mains hum, static in bursts (also
from an 8 kHz 8-bit file) and low-passed static in bursts, synthesised here.
Prints a Markdown table (group, clips, flagged as no speech, share); --json prints the rows as JSON instead.
"""
from __future__ import annotations

import argparse
import glob
import gzip
import io
import json
import os
import sys

import numpy as np
import soundfile as sf

from aromni.core.eval import real_speech
from aromni.core.levels import no_speech

SR = 16000


def _read(path: str | io.BytesIO) -> tuple[np.ndarray, int]:
    x, sr = sf.read(path, dtype="float32", always_2d=True)
    return x.mean(axis=1), sr


def _corpus(path: str) -> list[str]:
    root = os.path.dirname(os.path.abspath(path))
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [os.path.join(root, r["audio"]) for r in rows if r.get("audio")]


def _asterisk() -> tuple[list[str], list[str]]:
    """The Asterisk package's recordings: those its transcript gives words for, and those that hold none (the
    ``silence/`` files and the sounds it writes in brackets: "[this is a simple beep tone]")."""
    with gzip.open(real_speech.ASTERISK_TEXT, "rt", encoding="utf-8", errors="replace") as f:
        text = {n.strip(): t.strip() for n, sep, t in (line.partition(":") for line in f)
                if sep and not n.startswith(";")}
    said, quiet = [], []
    for path in sorted(glob.glob(os.path.join(real_speech.ASTERISK_SOUNDS, "**", "*.wav"), recursive=True)):
        name = os.path.splitext(os.path.relpath(path, real_speech.ASTERISK_SOUNDS))[0]
        if name.startswith("silence/") or text.get(name, "").startswith("["):
            quiet.append(path)
        elif text.get(name):
            said.append(path)
    return said, quiet


def _u8(wav: np.ndarray, sr: int) -> tuple[np.ndarray, int]:
    """``wav`` as it reads back from an 8-bit (unsigned) WAV file."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(wav, -1, 1), sr, format="WAV", subtype="PCM_U8")
    buf.seek(0)
    return _read(buf)


def _bursts(n: int, sr: int, hz: float) -> np.ndarray:
    """1 for the first half of each of ``hz`` periods a second, else 0 (``n`` samples)."""
    return (np.sin(2 * np.pi * hz * np.arange(n) / sr) > 0).astype(np.float64)


def _synthetic(rng: np.random.Generator) -> dict[str, list[tuple[np.ndarray, int]]]:
    n, n8 = 2 * SR, 2 * 8000
    t = np.arange(n) / SR
    out = {"digital silence (2 s)": [np.zeros(n)],
           "hiss, -60 dBFS": [1e-3 * rng.standard_normal(n)],
           "static, -40 / -20 / -10 dBFS": [a * rng.standard_normal(n) for a in (0.01, 0.1, 0.3)],
           "mains hum 50 / 60 Hz": [0.2 * np.sin(2 * np.pi * f * t) for f in (50, 60)],
           "static in bursts, 2 / 4 / 7 a second, -26 / -10 dBFS": [a * rng.standard_normal(n) * _bursts(n, SR, hz)
                                                                     for a in (0.05, 0.3) for hz in (2, 4, 7)]}
    groups = {k: [(np.asarray(w, np.float32), SR) for w in v] for k, v in out.items()}
    groups["static in bursts, 8 kHz 8-bit WAV"] = [_u8(0.3 * rng.standard_normal(n8) * _bursts(n8, 8000, hz), 8000)
                                                   for hz in (2, 4, 7)]
    smooth = np.ones(4) / 4  # a low-pass: the spectrum falls off above ~2 kHz
    groups["low-passed static in bursts (passes: its spectrum is not flat)"] = [
        (np.asarray(np.convolve(0.3 * rng.standard_normal(n), smooth, "same") * _bursts(n, SR, hz), np.float32), SR)
        for hz in (2, 4, 7)]
    return groups


def _noisy(files: list[str], snr: float, rng: np.random.Generator) -> int:
    flagged = 0
    for f in files:
        x, sr = _read(f)
        p = float(np.mean(x ** 2))
        flagged += bool(no_speech(x + np.sqrt(p / 10 ** (snr / 10)) * rng.standard_normal(x.size), sr))
    return flagged


def rows(data: str | None, n: int, snrs: list[float], seed: int) -> tuple[list[dict], list[str]]:
    """The table's rows (group, clips, flagged) and notes on groups left out."""
    rng = np.random.default_rng(seed)
    out, notes = [], []

    def add(group: str, flags: list[bool]) -> None:
        out.append({"group": group, "clips": len(flags), "flagged": int(sum(flags))})

    speech: dict[str, list[str]] = {}
    if data:
        speech["corpus"] = _corpus(data)
    if os.path.isdir(real_speech.ASTERISK_SOUNDS) and os.path.isfile(real_speech.ASTERISK_TEXT):
        said, quiet = _asterisk()
        speech["Asterisk recordings"] = said
        add("Asterisk silence/ and bracketed sounds: tones, beeps, monkeys (not speech)",
            [bool(no_speech(*_read(f))) for f in quiet])
    else:
        notes.append("Asterisk sounds left out: apt-get install asterisk-core-sounds-en-wav asterisk-core-sounds-en")
    if os.path.isdir(real_speech.LIBRIVOX):
        speech["LibriVox"] = sorted(glob.glob(os.path.join(real_speech.LIBRIVOX, "*.wav")))
    else:
        notes.append("LibriVox left out: apt-get install pocketsphinx-testdata")
    for group, files in speech.items():
        add(f"{group} (speech)", [bool(no_speech(*_read(f))) for f in files])
    for group, files in speech.items():
        if group == "LibriVox":
            continue
        pick = [files[i] for i in sorted(rng.choice(len(files), min(n, len(files)), replace=False))]
        for snr in snrs:
            out.append({"group": f"{group} + white noise at {snr:g} dB SNR (speech)", "clips": len(pick),
                        "flagged": _noisy(pick, snr, rng)})
    for group, items in _synthetic(rng).items():
        add(f"{group} (not speech)", [bool(no_speech(w, sr)) for w, sr in items])
    return out, notes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="a corpus manifest whose audio is speech (e.g. corpus/heldout.jsonl)")
    ap.add_argument("--n", type=int, default=300, help="clips per group that get noise added")
    ap.add_argument("--snr", default="20,10,6,3,0", help="signal-to-noise ratios in dB, comma-separated")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    a = ap.parse_args()
    try:
        snrs = [float(s) for s in a.snr.split(",") if s.strip()]
    except ValueError:
        print(f"no_speech_check: --snr: not a list of numbers: {a.snr!r}", file=sys.stderr)
        return 2
    if a.data and not os.path.isfile(a.data):
        print(f"no_speech_check: --data: no such file: {a.data}", file=sys.stderr)
        return 2
    table, notes = rows(a.data, a.n, snrs, a.seed)
    for note in notes:
        print(f"no_speech_check: {note}", file=sys.stderr)
    if a.json:
        print(json.dumps(table, indent=1))
        return 0
    print("| group | clips | flagged as no speech |\n|---|---|---|")
    for r in table:
        print(f"| {r['group']} | {r['clips']} | {r['flagged']} ({100 * r['flagged'] / max(r['clips'], 1):.1f}%) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
