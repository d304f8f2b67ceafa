"""The commands against a server (core/client.py, core/remote_chat.py): no torch, numpy or model code imported,
options sent as in-process, the same bytes written, chat (REPL and --batch) the same as in-process for the same
seed."""
from __future__ import annotations

import io
import json
import os
from dataclasses import replace

import pytest

from _server import aromni, start_server, stop

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

HEAVY = ("torch", "numpy", "httpx", "aromni.core.decoding", "aromni.core.model")  # model and array code


def png_bytes() -> bytes:
    from PIL import Image, ImageDraw
    im = Image.new("RGB", (64, 64), (20, 20, 160))
    ImageDraw.Draw(im).ellipse((16, 16, 48, 48), fill=(200, 30, 30))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def imported(stderr: bytes) -> set[str]:
    """Module names from ``python -X importtime`` lines."""
    out = set()
    for line in stderr.decode(errors="replace").splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            out.add(line.rsplit("|", 1)[1].strip())
    return out


@pytest.fixture(scope="module")
def server():
    p, url = start_server()
    yield url
    stop(p)


@pytest.fixture(scope="module")
def media(server, tmp_path_factory):
    """A WAV the model said and a PNG, as files."""
    d = tmp_path_factory.mktemp("media")
    r = aromni("tts", "--seed", "7", "-q", "a red circle", "-o", str(d / "in.wav"), host=server)
    assert r.returncode == 0, r.stderr.decode()[-800:]
    (d / "in.png").write_bytes(png_bytes())
    return d


# ----------------------------------------------------------------------------------------------
# options and audio without a server
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task, given", [
    ("tts", {"greedy": False, "temperature": 0.7, "batch_size": 4, "compile": True}),
    ("t2i", {"cfg_text": 2.0, "image_top_k": 10, "candidates": 2}),
    ("asr", {"max_new_tokens": 33, "repetition_penalty": 1.1}),
    ("chat", {"images": False, "speech": True, "top_p": 0.5}),
])
@pytest.mark.parametrize("compat", [False, True])
def test_request_options_rebuild_the_local_options(task, given, compat):
    from aromni.core.client import request_options
    from aromni.core.decoding import options_for
    from aromni.core.serve.wire import options_from_payload

    payload = request_options({**given, "top_k": None}, compat)
    assert "batch_size" not in payload and "compile" not in payload and "top_k" not in payload
    assert json.loads(json.dumps(payload)) == payload
    local = options_for(task, compat=compat, **given)
    served = options_from_payload(task, payload, batch_size=local.batch_size, compile=local.compile)
    engine = {"batch_size", "compile"}  # the server's own, whether or not the command was given them
    assert replace(served, explicit=served.explicit - engine) == replace(local, explicit=local.explicit - engine)


def test_request_options_refuse_bad_values_as_in_process():
    from aromni.core.client import request_options
    from aromni.core.errors import OptionError

    with pytest.raises(OptionError) as e:
        request_options({"top_p": 1.5})
    assert e.value.option == "top_p"
    with pytest.raises(OptionError):
        request_options({"temperature": float("nan")})


@pytest.mark.parametrize("raw", [False, True])
@pytest.mark.parametrize("seekable", [False, True])
def test_pcm16_writer_writes_the_bytes_of_audio_writer(raw, seekable, tmp_path):
    import numpy as np

    from aromni.core.audio_io import AudioWriter, to_pcm16
    from aromni.core.wav_stream import Pcm16Writer

    chunks = [np.sin(np.arange(n) / 7.0).astype(np.float32) * 0.8 for n in (160, 1, 0, 999)]
    outs = []
    for k, make in enumerate((lambda f: AudioWriter(f, 16000, raw=raw), lambda f: Pcm16Writer(f, 16000, raw=raw))):
        path = tmp_path / f"{k}.wav"
        with open(path, "wb") as f:
            if not seekable:
                f.seekable = lambda: False  # as a pipe
            w = make(f)
            for c in chunks:
                w.write(c if k == 0 else to_pcm16(c))
            w.close()
        outs.append(path.read_bytes())
    assert outs[0] == outs[1] and len(outs[0]) > 2000


@pytest.mark.parametrize("host", ["http://[bad", "localhost:abc", "ftp://x", "http://127.0.0.1:9"])
def test_bad_or_unreachable_host_is_one_line(host, tmp_path):
    out = tmp_path / "x.wav"
    r = aromni("tts", "hi", "-o", str(out), host=host)
    lines = r.stderr.decode().strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and not out.exists(), r.stderr.decode()
    assert ("cannot reach" if host.endswith(":9") else "not a server URL") in lines[0]


# ----------------------------------------------------------------------------------------------
# the remote path imports no model code
# ----------------------------------------------------------------------------------------------
def test_remote_commands_import_no_model_code(server, media, tmp_path):
    cases = [
        (["tts", "--seed", "1", "hello there", "-o", str(tmp_path / "x.wav")], None),
        (["tts", "--seed", "1", "--raw", "hello"], None),
        (["asr", "--seed", "1", str(media / "in.wav")], None),
        (["caption", "--seed", "1", str(media / "in.png")], None),
        (["t2i", "--seed", "1", "a red circle", "-o", str(tmp_path / "x.png")], None),
        (["chat", "--seed", "1", "-d", str(tmp_path)], b"hello\n/image " + str(media / "in.png").encode() + b"\nhi\n"),
    ]
    for args, stdin in cases:
        r = aromni(*args, "-q", host=server, input=stdin, python=("-X", "importtime"))
        assert r.returncode == 0, (args, r.stderr.decode()[-1500:])
        mods = imported(r.stderr)
        assert "aromni.core.client" in mods, args
        heavy = sorted(m for m in mods if m.split(".")[0] in HEAVY or m in HEAVY)
        assert not heavy, (args, heavy)
    # generate reads and writes token files (numpy for NPY) but loads no model code either
    r = aromni("generate", "--seed", "1", "--task", "text", "--max-new-tokens", "4", "-q", "-", host=server,
               input=b"0 5 6 7\n", python=("-X", "importtime"))
    assert r.returncode == 0, r.stderr.decode()[-1500:]
    assert not [m for m in imported(r.stderr) if m.split(".")[0] == "torch"]


def test_remote_errors_are_one_line_and_leave_no_file(server, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    r = aromni("caption", str(bad), host=server)
    lines = r.stderr.decode().strip().splitlines()
    assert r.returncode == 2 and r.stdout == b"" and len(lines) == 1, r.stderr.decode()
    assert str(bad) in lines[0] and "images[0]" not in lines[0]
    out = tmp_path / "x.png"
    r = aromni("t2i", "--candidates", "99", "a circle", "-o", str(out), host=server)  # over the server's limit
    assert r.returncode == 2 and not out.exists() and len(r.stderr.decode().strip().splitlines()) == 1
    r = aromni("tts", "--top-p", "2", "hi", "-o", str(tmp_path / "y.wav"), host=server)
    assert r.returncode == 2 and "--top-p" in r.stderr.decode() and not (tmp_path / "y.wav").exists()


# ----------------------------------------------------------------------------------------------
# chat through the server: the same replies and files as in-process
# ----------------------------------------------------------------------------------------------
def test_chat_repl_same_as_local(server, media, tmp_path):
    lines = (f"hello there\n/image {media / 'in.png'}\nwhat is this?\n/audio {media / 'in.wav'}\n/reset\n"
             f"tell me about it\n/audio {media / 'in.wav'} say it back\nand again\n").encode()
    outs = []
    for name, host in (("local", None), ("remote", server)):
        d = tmp_path / name
        d.mkdir()
        r = aromni("chat", "--seed", "3", "-q", "--json", "-d", str(d), input=lines, host=host)
        assert r.returncode == 0, r.stderr.decode()[-1500:]
        files = {p: (d / p).read_bytes() for p in sorted(os.listdir(d))}
        outs.append((r.stdout.decode().replace(str(d), "D"), files))
    assert outs[0] == outs[1]
    assert len(outs[0][0].splitlines()) == 6


def test_chat_batch_same_as_local(server, media, tmp_path):
    dialogs = tmp_path / "dialogs.jsonl"
    dialogs.write_text("\n".join(json.dumps(d) for d in [
        {"dialog_id": "a", "turns": [{"text": "hello"}, {"role": "assistant", "text": "hi there"},
                                     {"text": "what color is the sky?"}, {"text": "and now?", "reset": True}]},
        {"dialog_id": "b", "turns": [{"text": "describe", "image": str(media / "in.png")},
                                     {"wav_path": str(media / "in.wav")}]},
        {"dialog_id": "c", "turns": [{"text": "x"}, {"text": "y"}]},
    ]) + "\n")
    outs = []
    for name, host in (("local", None), ("remote", server)):
        d = tmp_path / name
        r = aromni("chat", "--batch", str(dialogs), "--seed", "5", "-q", "-d", str(d), host=host)
        assert r.returncode == 0, r.stderr.decode()[-1500:]
        files = {p: (d / p).read_bytes() for p in sorted(os.listdir(d))}
        outs.append((r.stdout.decode().replace(str(d), "D"), files))
    assert outs[0] == outs[1]
    recs = [json.loads(x) for x in outs[0][0].splitlines()]
    assert [len(r["turns"]) for r in recs] == [3, 2, 2]
