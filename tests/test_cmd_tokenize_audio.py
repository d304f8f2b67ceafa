"""`aromni tokenize-audio` through the real CLI."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from aromni.core.audio_io import load_audio, write_wav
from aromni.core.bundle import load_bundle
from aromni.core.tokens import audio_block, read_tokens


def cli(*args, stdin: bytes | None = None, cwd=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("AROMNI_MODEL", None)
    return subprocess.run([sys.executable, "-m", "aromni", "tokenize-audio", *args], input=stdin,
                          capture_output=True, env=env, cwd=cwd, timeout=120)


@pytest.fixture(scope="module")
def omni(tiny_bundle):
    return load_bundle(tiny_bundle)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("audio")
    t = np.arange(16000 * 3 // 2) / 16000
    a = (0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 2 * t)).astype(np.float32)  # 1.5 s at 16 kHz
    b = (0.2 * np.sin(2 * np.pi * 330 * t[:9000])).astype(np.float32)
    write_wav(str(d / "a.wav"), a, 16000)
    sf.write(str(d / "b.flac"), b, 16000)
    return d


def expected(omni, path) -> list[int]:
    tok = omni.speech
    return tok.encode(load_audio(str(path), tok.sample_rate)).tolist()


def test_lines_on_stdout(tiny_bundle, omni, clips):
    r = cli(str(clips / "a.wav"), str(clips / "b.flac"), "--model", tiny_bundle)
    assert r.returncode == 0, r.stderr.decode()
    lines = r.stdout.decode().splitlines()
    assert lines[0] == f"#aromni-layout={omni.vocab.fingerprint}"
    seqs = [list(map(int, line.split())) for line in lines[1:]]
    assert seqs == [audio_block(expected(omni, clips / n), omni.vocab) for n in ("a.wav", "b.flac")]
    # 1.5 s -> 60 codes at 40/s, plus <boa> and <eoa>
    assert len(seqs[0]) == 62
    assert b"tokenize-audio" in r.stderr  # progress bar for several files


def test_raw_codes_from_stdin(tiny_bundle, omni, clips):
    data = (clips / "a.wav").read_bytes()
    r = cli("-", "--codes", "--quiet", "--model", tiny_bundle, stdin=data)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stderr == b""
    lines = r.stdout.decode().splitlines()
    assert len(lines) == 1 and list(map(int, lines[0].split())) == expected(omni, clips / "a.wav")


@pytest.mark.parametrize("suffix", ["npy", "json"])
def test_output_files(tiny_bundle, omni, clips, tmp_path, suffix):
    out = tmp_path / f"t.{suffix}"
    r = cli(str(clips / "a.wav"), str(clips / "b.flac"), "-o", str(out), "-m", tiny_bundle, "-q")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b""
    stream = read_tokens(str(out))
    assert stream.layout == omni.vocab.fingerprint
    assert stream.sequences == [audio_block(expected(omni, clips / n), omni.vocab) for n in ("a.wav", "b.flac")]


def test_six_channels_are_downmixed(tiny_bundle, omni, clips, tmp_path):
    """Decision: up to 8 channels are accepted and averaged to mono (as the reference's convert_audio)."""
    rng = np.random.default_rng(0)
    multi = (0.2 * rng.standard_normal((8000, 6))).astype(np.float32)
    sf.write(str(tmp_path / "six.wav"), multi, 8000, subtype="FLOAT")
    sf.write(str(tmp_path / "mono.wav"), multi.mean(axis=1), 8000, subtype="FLOAT")
    r = cli(str(tmp_path / "six.wav"), "--codes", "-q", "-m", tiny_bundle)
    assert r.returncode == 0, r.stderr.decode()
    assert list(map(int, r.stdout.split())) == expected(omni, tmp_path / "mono.wav")


def _bad_inputs(tmp_path, clips) -> dict[str, tuple[str, str]]:
    """name -> (path, a fragment of the expected message)."""
    full = (clips / "a.wav").read_bytes()
    (tmp_path / "trunc.wav").write_bytes(full[: len(full) // 2])
    (tmp_path / "empty.wav").write_bytes(b"")
    sf.write(str(tmp_path / "zero.wav"), np.zeros(0, np.float32), 16000)
    nan = np.zeros(800, np.float32)
    nan[100] = np.nan
    nan[200] = np.inf
    sf.write(str(tmp_path / "nan.wav"), nan, 16000, subtype="FLOAT")
    (tmp_path / "notes.txt").write_text("this is not audio\n" * 20)
    sf.write(str(tmp_path / "nine.wav"), np.zeros((100, 9), np.float32), 16000)
    return {"truncated": ("trunc.wav", "truncated WAV"), "empty": ("empty.wav", "empty file"),
            "zero samples": ("zero.wav", "no samples"), "nan": ("nan.wav", "NaN or infinite"),
            "not audio": ("notes.txt", "not a readable audio file"), "nine channels": ("nine.wav", "9 channels"),
            "missing": ("missing.wav", "no such file")}  # (compared case-insensitively)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["truncated", "empty", "zero samples", "nan", "not audio", "nine channels",
                                  "missing"])
def test_bad_inputs_exit_2_with_one_line(tiny_bundle, clips, tmp_path, case):
    name, fragment = _bad_inputs(tmp_path, clips)[case]
    r = cli(str(tmp_path / name), "-m", tiny_bundle)
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert len(err.strip().splitlines()) == 1 and fragment.lower() in err.lower() and name in err, err
    assert r.stdout == b""  # not even the layout header: a pipe downstream sees no stream at all


def test_streamed_wav_header_is_not_truncation():
    from aromni.core.audio_io import truncation as wav_truncation
    from aromni.core.audio_io import wav_header

    body = b"\0\0" * 100
    assert wav_truncation(wav_header(None, 16000) + body) is None  # pipe header: sizes 0xFFFFFFFF
    assert wav_truncation(wav_header(100, 16000) + body) is None
    assert "declares 200 bytes" in wav_truncation(wav_header(100, 16000) + body[:50])
    # a chunk before "data" (LIST) is skipped
    hdr = wav_header(100, 16000)
    listed = hdr[:36] + b"LIST" + struct.pack("<I", 4) + b"INFO" + hdr[36:]
    assert wav_truncation(listed + body) is None
    assert wav_truncation(b"not a wav") is None


@pytest.mark.slow
def test_model_without_speech_tokenizer(tiny_bundle, tmp_path, clips):
    meta = json.load(open(os.path.join(tiny_bundle, "aromni.json")))
    meta.pop("speech_tokenizer")
    d = tmp_path / "nospeech"
    d.mkdir()
    for f in os.listdir(tiny_bundle):
        if f != "aromni.json":
            os.symlink(os.path.join(tiny_bundle, f), d / f)
    (d / "aromni.json").write_text(json.dumps(meta))
    r = cli(str(clips / "a.wav"), "-m", str(d))
    assert r.returncode == 2 and b"no speech tokenizer" in r.stderr, r.stderr
