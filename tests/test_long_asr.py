"""Long recordings: windows cut in the pauses, one per utterance, and WER close to the clips' (bundled model)."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from aromni.core.segmenting import no_speech, speech_segments, split_at_pauses

SR = 16000


def tone(s: float, f: float = 220.0) -> np.ndarray:
    t = np.arange(int(s * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32)


def gap(s: float) -> np.ndarray:
    return np.zeros(int(s * SR), dtype=np.float32)


def test_windows_are_cut_in_pauses_never_in_sound():
    wav = np.concatenate([gap(0.5), tone(1.0), gap(0.5), tone(0.1), gap(0.35), tone(2.0), gap(0.1), tone(1.0),
                          gap(1.0)])
    sound = np.abs(wav) > 0
    assert len(speech_segments(wav, SR)) == 3  # the 0.1 s gap is not a pause
    wins = split_at_pauses(wav, SR, max_s=6.0)
    assert len(wins) == 2  # the 0.1 s sound joined its nearer neighbour
    for a, b in wins:
        assert a == 0 or not sound[a - 1]
        assert b == len(wav) or not sound[b]
        assert (b - a) / SR <= 6.0
    covered = np.zeros(len(wav), dtype=bool)
    for a, b in wins:
        covered[a:b] = True
    assert covered[sound].all()  # no sound dropped
    assert all(wins[i][1] <= wins[i + 1][0] for i in range(len(wins) - 1))  # none twice


def test_one_utterance_that_fits_is_kept_whole_and_long_sound_is_cut():
    wav = np.concatenate([gap(0.4), tone(1.5), gap(0.4)])
    assert split_at_pauses(wav, SR, max_s=6.0) == [(0, len(wav))]
    long = tone(10.0)
    wins = split_at_pauses(long, SR, max_s=4.0)
    assert wins[0][0] == 0 and wins[-1][1] == len(long) and all((b - a) <= 4 * SR for a, b in wins)
    assert split_at_pauses(gap(3.0), SR, max_s=6.0) == [(0, 3 * SR)]


def _measure(n: int = 16):
    """(clip WER, long WER, windows, sentences) on ``n`` espeak-ng sentences in training voices (~1.8 s each)."""
    from aromni.core.corpus import speech as P

    if P.espeak_path() is None:
        pytest.skip("espeak-ng not installed (apt-get install espeak-ng)")
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    import bench_long_asr as B

    from aromni.core import tasks
    from aromni.core.api import load
    from aromni.core.eval.wer import corpus_wer, word_errors

    omni = load(None, device="cpu")
    refs, clips, long_wav, _ = B.make_recording(n, 1, omni.speech.sample_rate, (0.3, 0.8))
    assert 1.2 * n < len(long_wav) / omni.speech.sample_rate < 3 * n
    clip_wer = corpus_wer(refs, tasks.asr(omni, clips, seed=0)).wer
    windows = tasks.asr_windows(omni, long_wav, tasks.model_options(omni, None, "asr"))
    long_wer = word_errors(" ".join(refs), tasks.asr(omni, [long_wav], seed=0)[0]).wer
    return clip_wer, long_wer, len(windows), len(refs)


@pytest.mark.slow
def test_long_recording_is_transcribed_one_utterance_per_window():
    clip_wer, long_wer, n_windows, n_sent = _measure()
    assert n_windows == n_sent
    # windows of several sentences lost most words (83.8 % WER on 60 sentences where clips had 22.9 %)
    assert long_wer < 0.5, (long_wer, clip_wer)


@pytest.mark.slow
def test_long_recording_wer_is_within_a_few_points_of_the_clips():
    """60 sentences (docs/tokenizers.md): on the build machine clips 12.4 % WER, the long file 8.6 %."""
    clip_wer, long_wer, _, _ = _measure(60)
    assert long_wer <= clip_wer + 0.05, (long_wer, clip_wer)


def speechlike(s: float, seed: int = 0) -> np.ndarray:
    """Syllable-like sound: a gliding harmonic voice switched on and off about four times a second."""
    t = np.arange(int(s * SR)) / SR
    phase = 2 * np.pi * np.cumsum(140 * (1 + 0.2 * np.sin(2 * np.pi * 0.8 * t))) / SR
    voice = sum(np.sin(h * phase) / h for h in range(1, 10))
    env = np.clip(np.sin(2 * np.pi * 4.1 * t + seed), 0, None) ** 2
    return (0.2 * voice * env).astype(np.float32)


def test_no_speech_in_silence_tones_hum_and_steady_noise():
    rng = np.random.default_rng(0)
    for wav in (gap(2.0), gap(0.001), 1e-4 * rng.standard_normal(SR).astype(np.float32),  # -80 dBFS hiss
                tone(1.0), tone(2.0, 50.0),  # a beep, mains hum
                0.1 * rng.standard_normal(2 * SR).astype(np.float32)):  # loud static
        assert no_speech(wav, SR), wav
    assert no_speech(np.zeros(0, np.float32), SR) == "no samples"
    assert "silence" in no_speech(gap(1.0), SR) and "steady" in no_speech(tone(1.0), SR)


def test_speech_is_heard_when_quiet_noisy_short_or_between_silences():
    rng = np.random.default_rng(1)
    s = speechlike(1.5)
    p = float(np.mean(s ** 2))
    for wav in (s, s * 10 ** (-40 / 20) / np.sqrt(p),  # -40 dBFS
                s + np.sqrt(p / 10 ** (6 / 10)) * rng.standard_normal(s.size).astype(np.float32),  # 6 dB SNR
                speechlike(0.3), np.concatenate([gap(3.0), s, gap(3.0)])):
        assert no_speech(wav.astype(np.float32), SR) == ""


def test_no_speech_check_script(tmp_path):
    import json
    import subprocess

    import soundfile as sf

    (tmp_path / "wav").mkdir()
    with open(tmp_path / "m.jsonl", "w") as f:
        for i in range(4):
            sf.write(tmp_path / "wav" / f"{i}.wav", speechlike(1.0 + 0.2 * i, seed=i), SR)
            f.write(json.dumps({"id": str(i), "task": "asr", "audio": f"wav/{i}.wav", "text": "x"}) + "\n")
    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "no_speech_check.py")
    r = subprocess.run([sys.executable, script, "--data", str(tmp_path / "m.jsonl"), "--n", "3", "--snr", "10",
                        "--json"], capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode()
    rows = {row["group"]: row for row in json.loads(r.stdout)}
    assert rows["corpus (speech)"] == {"group": "corpus (speech)", "clips": 4, "flagged": 0}
    assert rows["corpus + white noise at 10 dB SNR (speech)"]["flagged"] == 0
    made = [row for g, row in rows.items() if "not speech" in g and "Asterisk" not in g]
    assert len(made) == 4 and all(row["flagged"] == row["clips"] > 0 for row in made)
    for g, row in rows.items():
        if "(speech)" in g and "0 dB" not in g:
            assert row["flagged"] == 0, g
    bad = subprocess.run([sys.executable, script, "--snr", "ten"], capture_output=True, timeout=60)
    assert bad.returncode == 2 and len(bad.stderr.decode().strip().splitlines()) == 1
