"""Speech for the corpus: espeak-ng synthesis, resampled to the codec's rate, cached by content.

Input speech (ASR, speech->image, spoken chat turns) uses several voices and speeds; output speech (TTS
targets, spoken replies) one fixed voice; one more voice is never used in training (held-out evaluation).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Callable, Iterable

import numpy as np

from ..audio_io import load_audio, write_wav
from ..errors import AromniError, NotAvailableError

ESPEAK = "espeak-ng"


@dataclass(frozen=True, order=True)
class Voice:
    """An espeak-ng voice ("en-us", or with a variant "en-us+m3") at a speed in words per minute."""

    name: str
    speed: int = 160


INPUT_VOICES = ("en-us", "en-gb", "en-us+m3", "en-us+f2", "en-gb+f3", "en-gb+m4")
INPUT_SPEEDS = (140, 165, 190)
OUTPUT_VOICE = Voice("en-us", 160)
HELDOUT_VOICE = Voice("en-us+f4", 165)
TRIM_THRESHOLD = 0.005  # |amplitude| below this at the ends is silence (espeak pads with digital zeros)
TRIM_MARGIN_S = 0.08


def input_voices() -> list[Voice]:
    return [Voice(v, s) for v in INPUT_VOICES for s in INPUT_SPEEDS]


@dataclass(frozen=True)
class VoiceSet:
    """The voices of one corpus: input voices (ASR, speech -> image, spoken chat turns), the one output voice
    (TTS targets, spoken replies) and the held-out voices (evaluation only)."""

    input: tuple[Voice, ...]
    output: Voice
    heldout: tuple[Voice, ...]

    def to_dict(self) -> dict:
        return {"input": sorted({v.name for v in self.input}), "input_speeds": sorted({v.speed for v in self.input}),
                "output": asdict(self.output), "heldout": [asdict(v) for v in self.heldout]}


# "espeak": espeak-ng only. "many": the neural hibari voice as output, espeak-ng, flite, one Kokoro voice (the slowest
# engine: RTF ~1.7 on one thread) and hibari as input (voices.py, engine:name; a neural voice's speed is words per
# minute over BASE_WPM); held out: one voice of espeak-ng, flite and Kokoro each.
NEURAL_INPUTS = ("flite:kal", "flite:awb", "flite:slt", "kokoro:jm_kumo", "hibari:heart")
BASE_WPM = 160
VOICE_SETS = {
    "espeak": VoiceSet(tuple(input_voices()), OUTPUT_VOICE, (HELDOUT_VOICE,)),
    "many": VoiceSet(tuple(input_voices()) + tuple(Voice(v, s) for v in NEURAL_INPUTS for s in INPUT_SPEEDS),
                     Voice("hibari:heart", BASE_WPM),
                     (HELDOUT_VOICE, Voice("flite:rms", 165), Voice("kokoro:jf_gongitsune", 165))),
}


def espeak_path() -> str | None:
    return shutil.which(ESPEAK)


def require_espeak() -> str:
    path = espeak_path()
    if path is None:
        raise NotAvailableError("espeak-ng is not installed; install it with: apt-get install espeak-ng")
    return path


@lru_cache(maxsize=1)
def espeak_version() -> str:
    out = subprocess.run([require_espeak(), "--version"], capture_output=True, text=True, check=False).stdout
    m = re.search(r"text-to-speech:\s*(\S+)", out)
    return m.group(1) if m else "unknown"


@lru_cache(maxsize=1)
def known_voices() -> frozenset[str]:
    """Language voices and "+variant" names that this espeak-ng knows (it silently falls back otherwise)."""
    exe = require_espeak()
    langs, variants = set(), set()
    for line in subprocess.run([exe, "--voices"], capture_output=True, text=True).stdout.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 2:
            langs.add(cols[1])
    for line in subprocess.run([exe, "--voices=variant"], capture_output=True, text=True).stdout.splitlines()[1:]:
        for c in line.split():
            if c.startswith("!v/"):
                variants.add(c[3:])
    return frozenset(langs | {f"+{v}" for v in variants})


def check_voice(voice: Voice) -> None:
    lang, _, variant = voice.name.partition("+")
    known = known_voices()
    if lang not in known or (variant and f"+{variant}" not in known):
        raise AromniError(f"espeak-ng has no voice {voice.name!r} (see: espeak-ng --voices=en, --voices=variant)")


def trim_silence(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    loud = np.flatnonzero(np.abs(wav) > TRIM_THRESHOLD)
    if len(loud) == 0:
        return wav
    m = int(TRIM_MARGIN_S * sample_rate)
    return wav[max(0, loud[0] - m):loud[-1] + m + 1]


def synthesize(text: str, voice: Voice, sample_rate: int) -> np.ndarray:
    """Speak ``text`` -> mono float32 at ``sample_rate``, leading/trailing silence trimmed."""
    exe = require_espeak()
    # text on stdin: espeak-ng would read a leading "-" as an option
    r = subprocess.run([exe, "-v", voice.name, "-s", str(voice.speed), "--stdout"], input=text.encode(),
                       capture_output=True, check=False)
    if r.returncode != 0 or len(r.stdout) <= 44:
        raise AromniError(f"espeak-ng failed for {text!r} ({r.stderr.decode(errors='replace').strip()})")
    return trim_silence(load_audio(r.stdout, sample_rate, source="espeak-ng output"), sample_rate)


def wav_name(text: str, voice: Voice, sample_rate: int) -> str:
    """Content-addressed file name: same text, voice, speed and rate -> same file."""
    key = f"{text}\x00{voice.name}\x00{voice.speed}\x00{sample_rate}\x00trim{TRIM_THRESHOLD}:{TRIM_MARGIN_S}"
    return hashlib.sha1(key.encode()).hexdigest()[:16] + ".wav"


@dataclass(frozen=True, order=True)
class SpeechJob:
    text: str
    voice: Voice


def synthesize_to(job: SpeechJob, path: str, sample_rate: int, speak: "Speak | None" = None) -> bool:
    """Write the job's WAV to ``path`` unless it exists (the cache). True if it was synthesised."""
    if os.path.exists(path):
        return False
    wav = (speak or synthesize)(job.text, job.voice, sample_rate)
    tmp = f"{path}.{os.getpid()}.tmp"
    write_wav(tmp, wav, sample_rate)
    os.replace(tmp, path)
    return True


Speak = Callable[[str, Voice, int], np.ndarray]  # (text, voice, sample rate) -> trimmed mono float32


def synthesize_many(jobs: Iterable[SpeechJob], wav_dir: str, sample_rate: int, workers: int = 2,
                    on_done: Callable[[], None] | None = None, speak: Speak = synthesize,
                    check: Callable[[Voice], None] = check_voice) -> dict[SpeechJob, str]:
    """Synthesise every distinct job into ``wav_dir`` (cached), ``workers`` at a time, with ``speak`` (default:
    espeak-ng) after ``check`` accepted every voice.

    Returns job -> file name (relative to ``wav_dir``)."""
    os.makedirs(wav_dir, exist_ok=True)
    uniq = sorted(set(jobs))
    names = {j: wav_name(j.text, j.voice, sample_rate) for j in uniq}
    for v in sorted({j.voice for j in uniq}):
        check(v)

    def one(job: SpeechJob) -> None:
        synthesize_to(job, os.path.join(wav_dir, names[job]), sample_rate, speak)
        if on_done is not None:
            on_done()

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(one, uniq))
    return names
