"""`aromni chat` through the real CLI on the tiny bundle: piped REPL and --batch dialogs (both schemas)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "AROMNI_MODEL": ""}


def aromni(bundle, *args, input=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "aromni", *args, "--model", bundle, "-q"], input=input,
                          capture_output=True, cwd=cwd, env=ENV, timeout=300)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    import soundfile as sf
    from PIL import Image

    d = tmp_path_factory.mktemp("chat_media")
    t = np.arange(8000) / 8000
    syllables = np.sin(np.pi * 4 * t) ** 2  # a tone that rises and falls four times a second, like syllables
    sf.write(d / "speech.wav", (0.3 * syllables * np.sin(2 * np.pi * 300 * t)).astype(np.float32), 8000)
    sf.write(d / "hum.wav", (0.3 * np.sin(2 * np.pi * 50 * t)).astype(np.float32), 8000)
    sf.write(d / "silence.wav", np.zeros(8000, np.float32), 8000)
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / "img.png")
    return d


def test_repl_on_piped_stdin(tiny_bundle, media, tmp_path):
    script = (f"hello\n/image {media / 'img.png'}\nwhat is this\n/audio {media / 'speech.wav'}\n"
              f"/save {tmp_path / 'conv.jsonl'}\n/reset\nhi again\n/bogus\n")
    r = aromni(tiny_bundle, "chat", "--out-dir", str(tmp_path / "files"), "--seed", "2", "--max-new-tokens", "40",
               input=script.encode())
    replies = r.stdout.decode().splitlines()
    assert len(replies) == 4  # one line per turn; commands print nothing on stdout
    assert r.returncode == 2 and b"<stdin> line 8: unknown command /bogus" in r.stderr
    saved = json.loads((tmp_path / "conv.jsonl").read_text())
    turns = saved["turns"]
    assert [t.get("text") for t in turns] == ["hello", "what is this", None]
    assert turns[1]["image_paths"] == [str(media / "img.png")] and turns[2]["wav_path"] == str(media / "speech.wav")


def test_batch_both_schemas_deterministic_across_batch_sizes(tiny_bundle, media, tmp_path):
    dialogs = tmp_path / "dialogs.jsonl"
    ref_schema = {"dialog_id": "d/1", "turns": [{"text": "hello"}, {"wav_path": "speech.wav"},
                                               {"text": "look", "image_paths": ["img.png"], "reset": True}]}
    our_schema = {"turns": [{"role": "user", "text": "hi"}, {"role": "assistant", "text": "hello!"},
                            {"role": "user", "text": "and then?", "image": "img.png"}]}
    for name in ("speech.wav", "img.png"):
        os.symlink(media / name, tmp_path / name)
    dialogs.write_text(json.dumps(ref_schema) + "\n" + json.dumps(our_schema) + "\n")
    runs = []
    for bs, out in (("8", "a"), ("1", "b")):
        r = aromni(tiny_bundle, "chat", "--batch", str(dialogs), "--out-dir", str(tmp_path / out), "--seed", "4",
                   "--max-new-tokens", "60", "--batch-size", bs)
        assert r.returncode == 0, r.stderr
        runs.append([json.loads(x) for x in r.stdout.decode().splitlines()])
    a, b = runs
    assert [d["dialog_id"] for d in a] == ["d/1", "dialog0002"]
    assert len(a[0]["turns"]) == 3 and len(a[1]["turns"]) == 2 and a[1]["turns"][0] == {"text": "hello!",
                                                                                         "given": True}
    strip = lambda runs: [[{k: v for k, v in t.items() if k not in ("images", "audio")} for t in d["turns"]]  # noqa
                          for d in runs]
    assert strip(a) == strip(b)  # batch size never changes a dialog
    for d in a:
        for t in d["turns"]:
            for p in t.get("images", []) + t.get("audio", []):
                assert os.path.isfile(p) and os.path.dirname(p) == str(tmp_path / "a")


def test_batch_rejects_malformed_dialogs(tiny_bundle, tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"turns": [{"role": "assistant", "text": "x"}]}\n')
    r = aromni(tiny_bundle, "chat", "--batch", str(f))
    assert r.returncode == 2 and b"line 1, turn 0: an assistant turn must follow a user turn" in r.stderr


def test_batch_runs_every_good_dialog_and_reports_each_bad_one_by_line(tiny_bundle, media, tmp_path):
    f = tmp_path / "mixed.jsonl"
    good = {"dialog_id": "g1", "turns": [{"text": "hello"}, {"text": "and then?"}]}
    lines = [json.dumps(good),
             "{not json",
             "",
             json.dumps({"dialog_id": "m", "turns": [{"text": "look", "image_paths": ["missing.png"]}]}),
             json.dumps({"dialog_id": "g2", "turns": [{"text": "bye", "image": str(media / "img.png")}]}),
             json.dumps({"dialog_id": "long", "turns": [{"text": "word " * 3000}]}),  # too long for the context
             "[1, 2]"]
    f.write_text("\n".join(lines) + "\n")
    r = aromni(tiny_bundle, "chat", "--batch", str(f), "--out-dir", str(tmp_path / "o"), "--seed", "4",
               "--max-new-tokens", "20")
    assert r.returncode == 2
    recs = [json.loads(x) for x in r.stdout.decode().splitlines()]
    assert [x["line"] for x in recs] == [1, 2, 4, 5, 6, 7]  # one result per dialog line, in file order
    ok = {x["dialog_id"]: x for x in recs if "error" not in x}
    assert set(ok) == {"g1", "g2"} and len(ok["g1"]["turns"]) == 2 and len(ok["g2"]["turns"]) == 1
    err = r.stderr.decode()
    assert f"{f}: line 2: invalid JSON" in err
    assert f"{f}: line 4, turn 0: image file {tmp_path / 'missing.png'} not found" in err  # the file and the line
    assert f"{f}: line 6, turn 0: this turn alone" in err and f"{f}: line 7: expected a JSON object" in err
    assert "4 of 6 dialog(s) failed (lines 2, 4, 6, 7)" in err
    # a good dialog's replies do not depend on the bad lines around it
    alone = tmp_path / "alone.jsonl"
    alone.write_text(json.dumps(good) + "\n")
    r1 = aromni(tiny_bundle, "chat", "--batch", str(alone), "--out-dir", str(tmp_path / "p"), "--seed", "4",
                "--max-new-tokens", "20")
    assert r1.returncode == 0, r1.stderr
    assert [t["text"] for t in json.loads(r1.stdout)["turns"]] == [t["text"] for t in ok["g1"]["turns"]]


def test_repl_goes_on_after_a_bad_command_and_exits_non_zero(tiny_bundle, media, tmp_path):
    script = f"hello\n/save\n/image {tmp_path / 'nope.png'}\n/frobnicate\nstill here\n/save {tmp_path / 'c.jsonl'}\n"
    r = aromni(tiny_bundle, "chat", "--out-dir", str(tmp_path), "--seed", "2", "--max-new-tokens", "20",
               input=script.encode())
    assert r.returncode == 2
    assert len(r.stdout.decode().splitlines()) == 2  # both text turns answered
    err = r.stderr.decode()
    assert "<stdin> line 2: /save needs a path" in err and "<stdin> line 3:" in err and "nope.png" in err
    assert "<stdin> line 4: unknown command /frobnicate" in err and "3 input line(s) failed" in err
    assert [t["text"] for t in json.loads((tmp_path / "c.jsonl").read_text())["turns"]] == ["hello", "still here"]


def test_audio_without_speech_is_refused_not_answered(tiny_bundle, media, tmp_path):
    script = f"/audio {media / 'silence.wav'}\n/audio {media / 'hum.wav'}\n/audio {media / 'speech.wav'}\n"
    r = aromni(tiny_bundle, "chat", "--out-dir", str(tmp_path), "--seed", "2", "--max-new-tokens", "20",
               input=script.encode())
    assert r.returncode == 2 and len(r.stdout.decode().splitlines()) == 1  # only the speech-like turn is answered
    err = r.stderr.decode()
    assert "<stdin> line 1: the turn's audio holds no speech: silence" in err
    assert "<stdin> line 2: the turn's audio holds no speech: a steady sound" in err


def test_slash_commands_are_a_table_and_help_lists_them():
    from aromni.commands.chat import HELP, SLASH

    assert set(SLASH) == {"/image", "/audio", "/save", "/reset", "/help"}
    for usage in (u for _, u, _ in SLASH.values()):
        assert usage in HELP
