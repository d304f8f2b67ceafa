"""`aromni tokenize-image` through the real CLI (subprocesses)."""
from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from aromni.core.bundle import load_tokenizer, read_meta
from aromni.core.tokens import parse_tokens, read_tokens
from aromni.core.vocab import VocabLayout


def aromni(*args, stdin: bytes | None = None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("AROMNI_MODEL", None)
    return subprocess.run([sys.executable, "-m", "aromni", "tokenize-image", *args], input=stdin,
                          capture_output=True, env=env, timeout=120)


def write_images(d, n: int) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        w, h = 20 + 7 * i, 30 - 3 * i
        arr = rng.integers(0, 256, (h, w, 4 if i % 2 else 3), dtype=np.uint8)
        p = os.path.join(d, f"im{i}.png")
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def ref(tiny_bundle):
    """(layout, image tokenizer) of the tiny bundle, loaded in-process as the expected-value oracle."""
    meta = read_meta(tiny_bundle)
    return VocabLayout.from_dict(meta["vocab"]), load_tokenizer("image", meta["image_tokenizer"], tiny_bundle)


def expected_codes(tok, paths):
    from aromni.core.image_tokenizer import open_image
    return tok.encode([open_image(p) for p in paths]).tolist()


def test_line_output_is_one_image_block_per_image(tmp_path, tiny_bundle, ref):
    layout, tok = ref
    paths = write_images(tmp_path, 3)
    r = aromni(*paths, "--model", tiny_bundle, "--batch-size", "2")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert lines[0] == f"#aromni-layout={layout.fingerprint}"
    stream = parse_tokens(r.stdout)
    want = expected_codes(tok, paths)
    assert stream.sequences == [[layout.boi] + [layout.image_offset + c for c in w] + [layout.eoi] for w in want]
    assert all(len(s) == tok.n_tokens + 2 for s in stream.sequences)
    assert b"tokenize-image" in r.stderr  # progress bar for several files


def test_codes_npy_json_and_stdin(tmp_path, tiny_bundle, ref):
    layout, tok = ref
    paths = write_images(tmp_path, 2)
    want = expected_codes(tok, paths)
    r = aromni(*paths, "--model", tiny_bundle, "--codes", "-q")
    assert r.returncode == 0 and r.stderr == b""
    assert r.stdout.decode().splitlines() == [" ".join(map(str, w)) for w in want]  # no layout header for codes

    out = tmp_path / "t.npy"
    r = aromni(*paths, "--model", tiny_bundle, "-o", str(out), "-q")
    assert r.returncode == 0 and r.stdout == b""
    s = read_tokens(str(out))
    assert s.layout == layout.fingerprint and [x[1:-1] for x in s.sequences] == [[layout.image_id(c) for c in w]
                                                                                  for w in want]
    arr = np.load(out)
    assert arr.shape == (2, tok.n_tokens + 2)

    out = tmp_path / "t.json"
    assert aromni(paths[0], "--model", tiny_bundle, "-o", str(out), "--codes").returncode == 0
    assert json.loads(out.read_text()) == want[0]

    r = aromni("-", "--model", tiny_bundle, "--codes", stdin=open(paths[1], "rb").read())
    assert r.returncode == 0 and r.stdout.decode().split() == [str(c) for c in want[1]]


def png_header(w: int, h: int) -> bytes:
    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("case,match", [
    ("text", "not an image file"),
    ("truncated", "truncated or corrupt image data"),
    ("one_pixel", "1x1 pixels, too small: the minimum is 8x8"),
    ("bomb", "decompression bomb"),
    ("missing", "no such file"),
    ("empty", "empty file"),
])
def test_bad_inputs_exit_2_with_one_line(tmp_path, tiny_bundle, case, match):
    good = write_images(tmp_path, 1)[0]
    b = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(b, "PNG")
    full = b.getvalue()
    one = io.BytesIO()
    Image.new("RGB", (1, 1)).save(one, "PNG")
    data = {"text": b"just text\n", "truncated": full[: len(full) // 2], "one_pixel": one.getvalue(),
            "bomb": png_header(30000, 30000), "missing": None, "empty": b""}[case]
    bad = tmp_path / f"{case}.png"
    if data is not None:
        bad.write_bytes(data)
    r = aromni(good, str(bad), "--model", tiny_bundle)
    assert r.returncode == 2, r.stderr
    err = r.stderr.decode()
    assert "Traceback" not in err
    if case != "truncated":  # header problems are found before the model loads and anything is written
        assert r.stdout == b""
        assert err.count("\n") == 1, err
    else:  # pixel data is only read batch by batch (the progress bar has started)
        err = err.splitlines()[-1] + "\n"
    assert err.startswith("aromni: error: ") and str(bad) in err and match in err, err


def test_usage_errors(tmp_path, tiny_bundle):
    p = write_images(tmp_path, 1)[0]
    r = aromni("-", "-", "--model", tiny_bundle, stdin=b"")
    assert r.returncode == 2 and b"only once" in r.stderr
    r = aromni("-", "--model", tiny_bundle, stdin=b"")
    assert r.returncode == 2 and b"<stdin>: empty input" in r.stderr
    r = aromni(p, "--model", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and r.stderr.count(b"\n") == 1
    r = aromni(p, "--model", tiny_bundle, "--batch-size", "0")
    assert r.returncode == 2
