"""`aromni detok` through the real CLI."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import wave

import pytest

from aromni.core.bundle import load_bundle
from aromni.core.tokens import TokenStream, audio_block, image_block, write_tokens
from aromni.core.vocab import arom_layout

PNG = b"\x89PNG\r\n\x1a\n"


def detok(*args, stdin: bytes | None = None, stdout=subprocess.PIPE, model: str | None = None):
    """Run the CLI in a subprocess."""
    cmd = [sys.executable, "-m", "aromni", "detok", *args] + (["--model", model] if model else [])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("AROMNI_MODEL", None)
    return subprocess.run(cmd, input=stdin, stdout=stdout, stderr=subprocess.PIPE, env=env, timeout=120)


@pytest.fixture
def cli(capsysbinary, tiny_bundle):
    """Run the CLI entry point in-process (same argument parsing and error mapping, no interpreter start-up):
    returns (exit code, stdout bytes, stderr bytes)."""
    from aromni.app import main

    def call(*args):
        try:
            main(["detok", *args, "--model", tiny_bundle])
            code = 0
        except SystemExit as e:
            code = e.code or 0
        out, err = capsysbinary.readouterr()
        return code, out, err
    return call


@pytest.fixture(scope="module")
def omni(tiny_bundle):
    return load_bundle(tiny_bundle)


@pytest.fixture(scope="module")
def files(omni, tmp_path_factory):
    """Token files for the tiny bundle's layout."""
    d = tmp_path_factory.mktemp("detok_in")
    v, enc = omni.vocab, omni.text.encode
    n_img = omni.image.n_tokens
    mixed = ([v.bos] + enc("hello ") + image_block(range(n_img), v) + enc("world") + audio_block([1, 2, 3] * 10, v)
             + [v.eom])
    out = {}

    def put(name, seqs, fp=v.fingerprint):
        out[name] = str(d / name)
        write_tokens(TokenStream(seqs, fp), out[name])

    put("mixed.npy", [mixed, enc("second line"), [v.bos, v.eos]])
    put("text.json", [[v.bos] + enc("a red circle") + [v.eoh] + enc(" GPT:") + [v.eom]])
    put("image.txt", [image_block([5] * n_img, v)])
    put("short_image.npy", [image_block([7, 8, 9], v)])
    put("clip.npy", [[v.audio_id(c) for c in range(40)]], fp=None)  # bare audio run, no fingerprint
    put("two_images.npy", [image_block([1] * n_img, v), image_block([2] * n_img, v)])
    put("wrong_modality.txt", [[v.boi, v.image_id(1), v.audio_id(1), v.eoi]])
    put("unterminated.txt", [enc("hi") + [v.boa, v.audio_id(1)]])
    put("out_of_range.txt", [enc("hi") + [v.vocab_size + 5]])
    put("foreign.npy", [[0, 16400, 2]], fp=arom_layout().fingerprint)
    put("image_codes.txt", [[3] * n_img, [4] * (n_img - 2)], fp=None)
    put("audio_codes.json", [list(range(20))], fp=None)
    put("empty_span.txt", [enc("a") + [v.boi, v.eoi] + enc("b") + [v.audio_id(3), v.audio_id(4)]])
    put("bad_codes.txt", [[omni.image.codebook_size + 1] * n_img], fp=None)
    return out


def test_text_to_stdout(tiny_bundle, files, cli):
    r = detok(files["text.json"], model=tiny_bundle)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == "a red circle GPT:\n"
    code, out, err = cli(files["text.json"], "--show-special")
    assert code == 0 and out.decode() == "<s>a red circle<eoh> GPT:<eom>\n"


def test_text_from_stdin(tiny_bundle, files):
    with open(files["text.json"], "rb") as f:
        r = detok("-", stdin=f.read(), model=tiny_bundle)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == "a red circle GPT:\n"


def test_mixed_to_out_dir(tiny_bundle, files, omni, tmp_path, cli):
    out = tmp_path / "media"
    r = detok(files["mixed.npy"], "--out-dir", str(out), model=tiny_bundle)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().splitlines() == ["hello world", "second line", ""]  # one line per sequence
    assert sorted(os.listdir(out)) == ["seq0_audio0.wav", "seq0_img0.png"]
    err = r.stderr.decode()
    assert str(out / "seq0_img0.png") in err and str(out / "seq0_audio0.wav") in err
    from PIL import Image

    img = Image.open(out / "seq0_img0.png")
    assert img.size == (omni.image.resolution, omni.image.resolution) and img.mode == "RGB"
    with wave.open(str(out / "seq0_audio0.wav")) as w:
        assert w.getframerate() == omni.speech.sample_rate and w.getnchannels() == 1
        assert w.getnframes() == 30 * omni.speech.hop
    code, out_, err = cli(files["mixed.npy"], "--out-dir", str(out), "--show-special", "--quiet")
    assert out_.decode().splitlines() == ["<s>hello <boi>[image seq0_img0.png]<eoi>world"
                                          "<boa>[audio seq0_audio0.wav]<eoa><eom>", "second line", "<s></s>"]
    assert code == 0 and err == b""


def test_single_image_to_stdout_pipe(tiny_bundle, files, tmp_path, cli):
    r = detok(files["image.txt"], model=tiny_bundle)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(PNG)
    # the same bytes as the file written to --out-dir
    assert cli(files["image.txt"], "-d", str(tmp_path))[0] == 0
    assert (tmp_path / "seq0_img0.png").read_bytes() == r.stdout


def test_single_clip_to_stdout_pipe(tiny_bundle, files, omni):
    r = detok(files["clip.npy"], model=tiny_bundle)
    assert r.returncode == 0, r.stderr
    assert r.stdout[:4] == b"RIFF" and r.stdout[8:12] == b"WAVE"
    assert len(r.stdout) >= 44 + 2 * 40 * omni.speech.hop


def test_short_image_is_padded_with_warning(cli, files):
    code, out, err = cli(files["short_image.npy"])
    assert code == 0 and out.startswith(PNG)
    assert b"3 image codes, expected" in err and b"padded by repeating the first code" in err


def test_empty_span_skipped_and_bare_audio(cli, files, tmp_path):
    code, out, err = cli(files["empty_span.txt"], "--show-special", "-d", str(tmp_path))
    assert code == 0, err
    assert out.decode() == "ab[audio seq0_audio0.wav]\n"  # a bare audio run has no <boa>/<eoa> to show
    assert b"empty image span skipped" in err
    assert os.listdir(tmp_path) == ["seq0_audio0.wav"]


def test_raw_codes(cli, files, tmp_path, omni):
    code, out, err = cli(files["image_codes.txt"], "--codes", "image", "-d", str(tmp_path))
    assert code == 0, err
    assert sorted(os.listdir(tmp_path)) == ["seq0_img0.png", "seq1_img0.png"]
    assert b"2 image codes, expected" not in err and b"expected %d; padded" % omni.image.n_tokens in err
    code, out, err = cli(files["audio_codes.json"], "--codes", "audio")
    assert code == 0 and out[:4] == b"RIFF"
    with wave.open(io.BytesIO(out)) as w:
        assert w.getframerate() == omni.speech.sample_rate and w.getnframes() == 20 * omni.speech.hop
    code, out, err = cli(files["bad_codes.txt"], "--codes", "image")
    assert code == 2 and b"outside the codebook" in err
    code, out, err = cli(files["image_codes.txt"], "--codes", "video")
    assert code == 2 and b"--codes must be 'image' or 'audio'" in err


@pytest.mark.parametrize("name, msg", [
    ("wrong_modality.txt", b"is not an image code, inside the image span opened at position 0"),
    ("unterminated.txt", b"audio span opened at position 2 is never closed"),
    ("out_of_range.txt", b"is outside the vocabulary"),
    ("foreign.npy", b"was made for vocabulary layout ar-omni:"),
    ("two_images.npy", b"holds 2 image(s); pass --out-dir DIR"),
    ("mixed.npy", b"holds 1 image(s) and 1 speech clip(s) and text; pass --out-dir DIR"),
])
def test_refusals_exit_2(cli, files, name, msg):
    code, out, err = cli(files[name])
    assert code == 2, err
    assert msg in err and err.count(b"\n") == 1, err
    assert out == b""


def test_garbage_and_missing_input(tiny_bundle, cli, tmp_path):
    r = detok("-", stdin=b"\x00\xff\xfe not tokens", model=tiny_bundle)
    assert r.returncode == 2 and b"<stdin>: not a token file" in r.stderr
    code, out, err = cli(str(tmp_path / "missing.npy"))
    assert code == 2 and b"missing.npy" in err


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pty")
def test_binary_refused_on_terminal(tiny_bundle, files):
    import pty

    master, slave = pty.openpty()
    try:
        r = detok(files["image.txt"], stdout=slave, model=tiny_bundle)
    finally:
        os.close(slave)
        os.close(master)
    assert r.returncode == 2 and b"refusing to write a PNG image to a terminal" in r.stderr
