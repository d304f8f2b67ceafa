"""Audio levels: no speech in silence, tones and steady noise; speech brought to a codec's training level."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import soundfile as sf

from aromni.core.levels import loud_flatness, loud_level, match_level, no_speech, typical_level

from test_long_asr import SR, gap, tone


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


def test_noise_in_bursts_is_no_speech_at_any_rate():
    """Static switched on and off comes and goes like syllables, but its spectrum is flat where speech has peaks."""
    rng = np.random.default_rng(2)
    for sr in (8000, 16000, 44100):
        for hz, s in ((2, 2.0), (4, 0.5), (7, 1.0)):
            t = np.arange(int(s * sr)) / sr
            wav = (0.3 * rng.standard_normal(t.size) * (np.sin(2 * np.pi * hz * t) > 0)).astype(np.float32)
            assert no_speech(wav, sr).startswith("noise"), (sr, hz)
            assert loud_flatness(wav, sr) > 0.5 > 0.1 > loud_flatness(speechlike(s), SR)


def test_speech_with_a_dc_offset_is_still_speech():
    assert no_speech(speechlike(1.0) + 0.5, SR) == ""


def test_match_level_brings_quiet_and_loud_speech_to_one_level():
    s = speechlike(1.5)
    target = loud_level(s, SR) + 3.0
    out = [match_level(s * g + dc, SR, target) for g, dc in ((1.0, 0.0), (0.02, 0.0), (3.0, 0.0), (0.3, 0.2))]
    for y in out:
        assert y.dtype == np.float32 and abs(loud_level(y, SR) - target) < 0.01 and abs(float(y.mean())) < 1e-4
    assert np.allclose(out[0], out[1], atol=1e-4) and np.allclose(out[0], out[3], atol=1e-4)
    quiet = gap(1.0) + 1e-5 * np.random.default_rng(0).standard_normal(SR).astype(np.float32)  # -100 dBFS
    assert np.array_equal(match_level(quiet, SR, target), quiet - quiet.mean())  # silence: nothing to match
    faint = s * 10 ** (-55 / 20)  # speech well below any level a codec is trained at: raised by at most 40 dB
    assert loud_level(match_level(faint, SR, target), SR) < target - 5


def test_typical_level_is_the_median_of_the_clips_not_silent():
    s = speechlike(1.0)
    clips = [s * 10 ** (g / 20) for g in (-6, 0, 3)] + [gap(1.0)]
    assert typical_level(clips, SR) == round(loud_level(s, SR), 1)


def test_speech_is_heard_when_quiet_noisy_short_or_between_silences():
    rng = np.random.default_rng(1)
    s = speechlike(1.5)
    p = float(np.mean(s ** 2))
    for wav in (s, s * 10 ** (-40 / 20) / np.sqrt(p),  # -40 dBFS
                s + np.sqrt(p / 10 ** (3 / 10)) * rng.standard_normal(s.size).astype(np.float32),  # 3 dB SNR
                speechlike(0.3), np.concatenate([gap(3.0), s, gap(3.0)])):
        assert no_speech(wav.astype(np.float32), SR) == ""


def test_no_speech_check_script(tmp_path):
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
    made = [row for g, row in rows.items() if "not speech" in g and "Asterisk" not in g and "passes" not in g]
    assert len(made) == 6 and all(row["flagged"] == row["clips"] > 0 for row in made)
    for g, row in rows.items():
        if "(speech)" in g and "0 dB" not in g:
            assert row["flagged"] == 0, g
    for args in (["--snr", "ten"], ["--data", str(tmp_path / "missing.jsonl")]):
        bad = subprocess.run([sys.executable, script, *args], capture_output=True, timeout=60)
        assert bad.returncode == 2 and len(bad.stderr.decode().strip().splitlines()) == 1, args


def test_level_robustness_script(tiny_bundle, tmp_path):
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    meta = json.loads((bundle / "aromni.json").read_text())
    meta["speech_tokenizer"]["input_dbfs"] = -15.0
    (bundle / "aromni.json").write_text(json.dumps(meta))
    (tmp_path / "wav").mkdir()
    with open(tmp_path / "m.jsonl", "w") as f:
        for i in range(2):
            sf.write(tmp_path / "wav" / f"{i}.wav", speechlike(1.0, seed=i), SR)
            f.write(json.dumps({"id": str(i), "task": "asr", "split": "heldout", "audio": f"wav/{i}.wav",
                                "text": "a red circle"}) + "\n")
    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "level_robustness.py")
    r = subprocess.run([sys.executable, script, "--data", str(tmp_path / "m.jsonl"), "--model", str(bundle),
                        "--gains", "0,-20", "--batch-size", "2", "--out", str(tmp_path / "out.json")],
                       capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    out = json.loads((tmp_path / "out.json").read_text())
    rows = {(x["gain_db"], x["input"]): x for x in out["results"]}
    assert out["input_dbfs"] == -15.0 and sorted(rows) == [(-20, "as given"), (-20, "leveled"), (0, "as given"),
                                                           (0, "leveled")]
    assert rows[(0, "leveled")]["wer"] == rows[(-20, "leveled")]["wer"]  # the same clips once leveled
    assert "| +0 dB | leveled |" in r.stdout.decode() and "| -20 dB | as given |" in r.stdout.decode()
    bad = subprocess.run([sys.executable, script, "--data", str(tmp_path / "m.jsonl"), "--gains", "x"],
                         capture_output=True, timeout=60)
    assert bad.returncode == 2 and len(bad.stderr.decode().strip().splitlines()) == 1
    missing = subprocess.run([sys.executable, script, "--data", str(tmp_path / "missing.jsonl")],
                             capture_output=True, timeout=60)
    assert missing.returncode == 2 and "no such file" in missing.stderr.decode()
    assert len(missing.stderr.decode().strip().splitlines()) == 1
    none = subprocess.run([sys.executable, script, "--data", str(tmp_path / "m.jsonl"), "--split", "train"],
                          capture_output=True, timeout=60)
    err = none.stderr.decode().strip()
    assert none.returncode == 2 and len(err.splitlines()) == 1 and "no train ASR lines" in err, err
