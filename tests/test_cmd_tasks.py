"""generate, tts, asr, caption and t2i through the real CLI on the tiny bundle (subprocesses)."""
from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "AROMNI_MODEL": ""}
LONG_TEXT = " ".join(f"This is sentence number {i} of a long text." for i in range(40))


def aromni(bundle, *args, input=None, cwd=None, check=True):
    r = subprocess.run([sys.executable, "-m", "aromni", *args, "--model", bundle, "-q"], input=input,
                       capture_output=True, cwd=cwd, env=ENV, timeout=300)
    if check and r.returncode != 0:
        raise AssertionError(f"exit {r.returncode}: {r.stderr.decode(errors='replace')}")
    return r


def wav_fields(data: bytes) -> tuple[int, int, int]:
    """(riff size, sample rate, data size) of a 44-byte PCM header."""
    assert data[:4] == b"RIFF" and data[8:16] == b"WAVEfmt " and data[36:40] == b"data"
    return struct.unpack("<I", data[4:8])[0], struct.unpack("<I", data[24:28])[0], struct.unpack("<I", data[40:44])[0]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """A stereo 16 kHz WAV (resampled to the codec's 8 kHz) and a PNG."""
    import soundfile as sf
    from PIL import Image

    d = tmp_path_factory.mktemp("media")
    t = np.arange(16000 * 2) / 16000
    wav = 0.3 * np.sin(2 * np.pi * 220 * t) * (t % 0.5 < 0.35)
    sf.write(d / "speech.wav", np.stack([wav, wav * 0.5], 1).astype(np.float32), 16000)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(d / "img.png")
    return d


# --- tts ------------------------------------------------------------------------------------------
def test_tts_file_pipe_raw_and_stats(tiny_bundle, tmp_path):
    out = tmp_path / "a.wav"
    r = aromni(tiny_bundle, "tts", "Hello there. How are you?", "-o", str(out), "--stats", "--seed", "3")
    data = out.read_bytes()
    riff, sr, size = wav_fields(data)
    assert sr == 8000 and size == len(data) - 44 and riff == len(data) - 8 and size > 0  # exact header on a file
    err = r.stderr.decode()
    assert "first audio" in err and "tokens/s" in err and "real-time factor" in err
    raw = aromni(tiny_bundle, "tts", "--raw", "--seed", "3", input=b"Hello there. How are you?").stdout  # stdin
    assert raw == data[44:]  # same seed, same audio


def test_tts_streams_and_stops_quietly_when_the_reader_leaves(tiny_bundle):
    """Audio arrives while generation is still running; closing the pipe (| head -c 100) ends with 141, no noise."""
    p = subprocess.Popen([sys.executable, "-m", "aromni", "tts", LONG_TEXT, "--model", tiny_bundle, "-q"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    head = p.stdout.read(100)
    assert len(head) == 100 and wav_fields(head)[::2] == (0xFFFFFFFF, 0xFFFFFFFF)  # a pipe: unknown length
    assert p.poll() is None  # still generating the later sentences
    p.stdout.close()
    rc = p.wait(timeout=300)
    assert rc == 141
    assert p.stderr.read() == b""


def test_tts_refuses_binary_to_a_terminal(tiny_bundle):
    import pty
    master, slave = pty.openpty()
    try:
        r = subprocess.run([sys.executable, "-m", "aromni", "tts", "hi", "--model", tiny_bundle], stdout=slave,
                           stderr=subprocess.PIPE, env=ENV, timeout=300)
    finally:
        os.close(slave)
        os.close(master)
    assert r.returncode == 2 and b"terminal" in r.stderr


def test_tts_batch(tiny_bundle, tmp_path):
    items = tmp_path / "items.jsonl"
    items.write_text('{"text": "First one."}\n{"text": "Second, a bit longer.", "output": "two.wav"}\n')
    r = aromni(tiny_bundle, "tts", "--batch", str(items), "--out-dir", str(tmp_path / "o"), "--json", "--seed", "1")
    lines = [json.loads(x) for x in r.stdout.decode().splitlines()]
    assert [os.path.basename(x["output"]) for x in lines] == ["tts_0000.wav", "two.wav"]
    for x in lines:
        data = open(x["output"], "rb").read()
        assert wav_fields(data)[2] == len(data) - 44


# --- asr / caption -----------------------------------------------------------------------------------
def test_asr_files_stdin_json_and_errors(tiny_bundle, media):
    wav = str(media / "speech.wav")
    r = aromni(tiny_bundle, "asr", wav, wav, "--json", "--seed", "0")
    lines = [json.loads(x) for x in r.stdout.decode().splitlines()]
    assert len(lines) == 2 and lines[0]["input"] == wav and lines[0]["text"] == lines[1]["text"]  # greedy
    r2 = aromni(tiny_bundle, "asr", input=open(wav, "rb").read())
    assert r2.stdout.decode().rstrip("\n") == " ".join(lines[0]["text"].split())
    bad = aromni(tiny_bundle, "asr", str(media / "missing.wav"), check=False)
    assert bad.returncode == 2 and b"missing.wav" in bad.stderr and len(bad.stderr.splitlines()) == 1


def test_caption(tiny_bundle, media):
    img = str(media / "img.png")
    r = aromni(tiny_bundle, "caption", img, "-", "--json", input=open(img, "rb").read())
    lines = [json.loads(x) for x in r.stdout.decode().splitlines()]
    assert [x["input"] for x in lines] == [img, "<stdin>"] and lines[0]["text"] == lines[1]["text"]
    bad = aromni(tiny_bundle, "caption", str(media / "speech.wav"), check=False)
    assert bad.returncode == 2 and b"not an image" in bad.stderr


# --- t2i --------------------------------------------------------------------------------------------
def test_t2i_stdout_patterns_and_seeds(tiny_bundle, tmp_path):
    from PIL import Image

    one = aromni(tiny_bundle, "t2i", "a red square", "--seed", "5").stdout
    im = Image.open(io.BytesIO(one))
    assert im.format == "PNG" and im.size == (256, 256)  # the tiny model's 16 px, enlarged 16x by default
    native = Image.open(io.BytesIO(aromni(tiny_bundle, "t2i", "a red square", "--seed", "5", "--scale", "1").stdout))
    assert native.size == (16, 16)
    assert native.resize((256, 256), Image.Resampling.NEAREST).tobytes() == im.convert(native.mode).tobytes()
    smooth = aromni(tiny_bundle, "t2i", "a red square", "--seed", "5", "--size", "100", "--upscale", "lanczos")
    assert Image.open(io.BytesIO(smooth.stdout)).size == (100, 100)
    for bad in (["--scale", "0"], ["--scale", "2", "--size", "64"], ["--upscale", "bicubic"]):
        r = aromni(tiny_bundle, "t2i", "a red square", "-o", str(tmp_path / "bad.png"), *bad, check=False)
        assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and not (tmp_path / "bad.png").exists()
    aromni(tiny_bundle, "t2i", "a red square", "--n", "2", "-o", str(tmp_path / "x_{i}.png"), "--seed", "5",
           "--batch-size", "1")
    a, b = (tmp_path / "x_0.png").read_bytes(), (tmp_path / "x_1.png").read_bytes()
    assert a == one and a != b  # image 0 uses seed 5 whatever the batch size; image 1 seed 6
    bad = aromni(tiny_bundle, "t2i", "a red square", "--n", "2", "-o", str(tmp_path / "y.png"), check=False)
    assert bad.returncode == 2 and b"{i}" in bad.stderr
    items = tmp_path / "p.jsonl"
    items.write_text('{"text": "a red square"}\n{"text": "a blue circle"}\n')
    r = aromni(tiny_bundle, "t2i", "--batch", str(items), "--out-dir", str(tmp_path / "d"), "--seed", "5")
    paths = r.stdout.decode().split()
    assert len(paths) == 2 and open(paths[0], "rb").read() == one


def test_pipeline_asr_into_t2i(tiny_bundle, media, tmp_path):
    """cat speech.wav | aromni asr | aromni t2i > out.png"""
    m = f"--model {tiny_bundle} -q"
    py = sys.executable
    cmd = f"cat {media / 'speech.wav'} | {py} -m aromni asr {m} | {py} -m aromni t2i {m} > {tmp_path / 'out.png'}"
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], env=ENV, capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- generate ---------------------------------------------------------------------------------------
def test_generate_file_formats_echo_and_batching(tiny_bundle, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("0 20 21 22\n0 30\n0 40 41 42 43 44\n")
    r = aromni(tiny_bundle, "generate", str(prompts), "--max-new-tokens", "12", "--seed", "7")
    lines = r.stdout.decode().splitlines()
    assert lines[0].startswith("#aromni-layout=tiny:") and len(lines) == 4
    rows = [list(map(int, x.split())) for x in lines[1:]]
    assert all(1 <= len(x) <= 12 for x in rows)
    one = aromni(tiny_bundle, "generate", str(prompts), "--max-new-tokens", "12", "--seed", "7", "--batch-size", "1")
    assert one.stdout == r.stdout  # batch composition never changes a row
    out = tmp_path / "o.json"
    aromni(tiny_bundle, "generate", str(prompts), "--max-new-tokens", "12", "--seed", "7", "--echo", "-o", str(out))
    obj = json.loads(out.read_text())
    assert obj["layout"].startswith("tiny:") and obj["sequences"][1] == [0, 30] + rows[1]


def test_generate_streams_stdin_lines_as_they_arrive(tiny_bundle):
    p = subprocess.Popen([sys.executable, "-m", "aromni", "generate", "--max-new-tokens", "5", "--model", tiny_bundle,
                          "-q", "--seed", "1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=ENV)
    p.stdin.write(b"0 20 21\n")
    p.stdin.flush()
    header = p.stdout.readline()
    first = p.stdout.readline()  # answered while stdin is still open
    assert header.startswith(b"#aromni-layout=") and len(first.split()) >= 1
    assert p.poll() is None
    p.stdin.write(b"0 30 31\n")
    p.stdin.close()
    rest = p.stdout.read()
    assert p.wait(timeout=300) == 0 and len(rest.splitlines()) == 1


def test_generate_rejects_bad_input(tiny_bundle, tmp_path):
    f = tmp_path / "bad.txt"
    f.write_text("#aromni-layout=ar-omni:00000000\n0 1 2\n")
    r = aromni(tiny_bundle, "generate", str(f), check=False)
    assert r.returncode == 2 and b"layout" in r.stderr
    f.write_text("0 99999\n")
    r = aromni(tiny_bundle, "generate", str(f), check=False)
    assert r.returncode == 2 and b"outside the vocabulary" in r.stderr


def test_ordered_lines_stream_head_row_and_hold_the_rest():
    from aromni.commands.generate import OrderedLines
    from aromni.core.tokens import LineWriter

    buf = io.BytesIO()
    snapshots = []

    class Spy(LineWriter):
        def token(self, tok):
            super().token(tok)
            snapshots.append(buf.getvalue())

    ol = OrderedLines(Spy(buf), 3)
    ol.token(1, 10)  # row 1 is held
    ol.token(0, 1)  # row 0 streams at once
    assert buf.getvalue() == b"1"
    ol.token(2, 20)
    ol.finish(2)
    ol.token(0, 2)
    ol.finish(0)  # row 0 ends: row 1 catches up, row 2 waits for row 1
    assert buf.getvalue() == b"1 2\n10"
    ol.token(1, 11)
    ol.finish(1)
    assert buf.getvalue() == b"1 2\n10 11\n20\n"
    assert snapshots[0] == b"1"


def test_bundle_decode_defaults_and_their_override(tiny_bundle, tmp_path):
    """aromni.json "decode" makes t2i argmax (seed-independent); --image-sample restores sampling, and so does
    --n > 1 unless --image-greedy; a bad table is one line and exit 2."""
    import shutil

    b = str(tmp_path / "b")
    shutil.copytree(tiny_bundle, b)
    meta = json.load(open(os.path.join(b, "aromni.json")))
    json.dump({**meta, "decode": {"t2i": {"image_greedy": True}}}, open(os.path.join(b, "aromni.json"), "w"))
    png = [aromni(b, "t2i", "a red square", "--seed", s).stdout for s in ("1", "2")]
    assert png[0] == png[1]
    sampled = [aromni(b, "t2i", "a red square", "--seed", s, "--image-sample").stdout for s in ("1", "2")]
    assert sampled[0] != sampled[1]
    # several images of one prompt are sampled despite the argmax default; an explicit --image-greedy keeps argmax
    aromni(b, "t2i", "a red square", "--n", "2", "--seed", "1", "-o", str(tmp_path / "n{i}.png"))
    assert (tmp_path / "n0.png").read_bytes() != (tmp_path / "n1.png").read_bytes()
    aromni(b, "t2i", "a red square", "--n", "2", "--seed", "1", "--image-greedy", "-o", str(tmp_path / "g{i}.png"))
    assert (tmp_path / "g0.png").read_bytes() == (tmp_path / "g1.png").read_bytes()
    json.dump({**meta, "decode": {"t2i": {"beam": 4}}}, open(os.path.join(b, "aromni.json"), "w"))
    bad = aromni(b, "t2i", "a red square", check=False)
    err = bad.stderr.decode()
    assert bad.returncode == 2 and "beam" in err and len(err.strip().splitlines()) == 1


def test_candidates_and_cfg_flags(tiny_bundle, tmp_path):
    """--candidates N (best of N by the model's own captioner / recogniser) and --cfg/--no-cfg on the CLI; a
    model's own candidates default is overridden by --candidates 1; --candidates 0 is one line, exit 2."""
    import shutil

    one = aromni(tiny_bundle, "t2i", "a red square", "--seed", "4").stdout
    assert aromni(tiny_bundle, "t2i", "a red square", "--seed", "4", "--candidates", "1").stdout == one
    best = [aromni(tiny_bundle, "t2i", "a red square", "--seed", "4", "--candidates", "4").stdout for _ in range(2)]
    assert best[0] == best[1] and best[0][:8] == b"\x89PNG\r\n\x1a\n"
    assert aromni(tiny_bundle, "t2i", "a red square", "--seed", "4", "--no-cfg").stdout[:8] == b"\x89PNG\r\n\x1a\n"
    wav = aromni(tiny_bundle, "tts", "Hi there.", "--seed", "1", "--candidates", "3", "--max-new-tokens", "30").stdout
    assert wav[:4] == b"RIFF"
    b = str(tmp_path / "b")
    shutil.copytree(tiny_bundle, b)
    meta = json.load(open(os.path.join(b, "aromni.json")))
    json.dump({**meta, "decode": {"t2i": {"candidates": 4, "cfg": False}}}, open(os.path.join(b, "aromni.json"), "w"))
    assert aromni(b, "t2i", "a red square", "--seed", "4", "--candidates", "1", "--cfg").stdout == one
    assert aromni(b, "t2i", "a red square", "--seed", "4", "--candidates", "4", "--cfg").stdout == best[0]
    bad = aromni(tiny_bundle, "t2i", "a red square", "--candidates", "0", check=False)
    err = bad.stderr.decode()
    assert bad.returncode == 2 and "candidates" in err and len(err.strip().splitlines()) == 1


def test_tts_chunk_words_flag_and_model_default(tiny_bundle, tmp_path):
    """--chunk-words N speaks pieces of at most N words (one decode each); a bundle's own chunk_words default
    applies unless --chunk-words is given; a negative N is one line, exit 2."""
    import shutil

    def pieces(bundle, *flags):
        r = aromni(bundle, "tts", "one two three four five", "--seed", "1", "--max-new-tokens", "20", "--json",
                   "-o", str(tmp_path / "o.wav"), *flags)
        return json.loads(r.stdout)["sentences"]

    assert pieces(tiny_bundle) == 1 and pieces(tiny_bundle, "--chunk-words", "2") == 3
    b = str(tmp_path / "b")
    shutil.copytree(tiny_bundle, b)
    meta = json.load(open(os.path.join(b, "aromni.json")))
    json.dump({**meta, "decode": {"tts": {"chunk_words": 3}}}, open(os.path.join(b, "aromni.json"), "w"))
    assert pieces(b) == 2 and pieces(b, "--chunk-words", "0") == 1
    bad = aromni(tiny_bundle, "tts", "hi", "--chunk-words", "-1", "-o", str(tmp_path / "x.wav"), check=False)
    err = bad.stderr.decode()
    assert bad.returncode == 2 and "chunk-words" in err and len(err.strip().splitlines()) == 1


def test_tts_lead_in_and_speech_pad_flags(tiny_bundle, tmp_path):
    """--lead-in S starts the WAV with S seconds of silence; --speech-pad keeps the length; a bundle's own
    defaults apply unless a flag is given; bad values are one line, exit 2."""
    import shutil

    import soundfile as sf

    def wav(bundle, *flags):
        out = str(tmp_path / "o.wav")
        aromni(bundle, "tts", "one two three", "--seed", "1", "--max-new-tokens", "20", "-o", out, *flags)
        return sf.read(out, dtype="float32")

    (plain, sr) = wav(tiny_bundle)
    (led, _) = wav(tiny_bundle, "--lead-in", "0.2", "--speech-pad", "4")
    assert len(led) == len(plain) + int(0.2 * sr) and not led[: int(0.2 * sr)].any()
    b = str(tmp_path / "b")
    shutil.copytree(tiny_bundle, b)
    meta = json.load(open(os.path.join(b, "aromni.json")))
    json.dump({**meta, "decode": {"tts": {"lead_in": 0.1, "speech_pad": 4}}}, open(os.path.join(b, "aromni.json"), "w"))
    assert len(wav(b)[0]) == len(plain) + int(0.1 * sr) and len(wav(b, "--lead-in", "0")[0]) == len(plain)
    for flag, value in (("--lead-in", "-1"), ("--speech-pad", "-2")):
        bad = aromni(tiny_bundle, "tts", "hi", flag, value, "-o", str(tmp_path / "x.wav"), check=False)
        err = bad.stderr.decode()
        assert bad.returncode == 2 and flag.lstrip("-") in err and len(err.strip().splitlines()) == 1
