"""The token pipeline: tokenize-text / tokenize-audio | generate --task T | detok, through the real CLI on the
bundled model, and the task templates generate wraps a bare input in (core/prompts.task_prompt)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from aromni.core.errors import InputError
from aromni.core.prompts import PromptContext, asr_prompt, caption_prompt, chat_prompt, chat_turn, s2i_prompt, \
    t2i_prompt, task_prompt, tts_prompt
from aromni.core.tokens import audio_block, image_block

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "AROMNI_MODEL": ""}  # "": the bundled model
PY = sys.executable


def aromni(*args, input=None, cwd=None, check=True):
    r = subprocess.run([PY, "-m", "aromni", *args], input=input, capture_output=True, cwd=cwd, env=ENV, timeout=300)
    if check and r.returncode != 0:
        raise AssertionError(f"exit {r.returncode}: {r.stderr.decode(errors='replace')}")
    return r


def shell(cmd: str, cwd) -> subprocess.CompletedProcess:
    """``cmd`` in bash with pipefail, ``aromni`` being this interpreter's entry point."""
    env = {**ENV, "PATH": os.path.dirname(PY) + os.pathsep + os.environ.get("PATH", "")}
    return subprocess.run(["bash", "-o", "pipefail", "-c", cmd.replace("aromni ", f"{PY} -m aromni ")],
                          capture_output=True, cwd=cwd, env=env, timeout=600)


# --- the README's pipelines on the bundled model -----------------------------------------------------
@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """A directory holding speech.wav: the bundled model saying the README's "a large red circle on the left"."""
    d = tmp_path_factory.mktemp("speech")
    aromni("tts", "a large red circle on the left", "-o", "speech.wav", "--seed", "1", "-q", cwd=d)
    return d


@pytest.mark.slow
def test_readme_pipeline_prints_the_transcript(speech):
    r = shell("aromni tokenize-audio speech.wav | aromni generate --task asr | aromni detok", speech)
    assert r.returncode == 0, r.stderr
    heard = r.stdout.decode().strip()
    assert heard and b"warning" not in r.stderr
    # the same prompt as the asr command builds: the same greedy transcript
    assert heard == aromni("asr", "speech.wav", "-q", cwd=speech).stdout.decode().strip()
    assert "circle" in heard.split()


@pytest.mark.slow
def test_an_empty_answer_is_a_warning_never_silence(speech):
    # the bare speech span sent without the asr template: the model stops at once (greedy, so always)
    r = shell("aromni tokenize-audio speech.wav | aromni generate --task asr --raw-prompt -q", speech)
    assert r.returncode == 0, r.stderr
    from aromni.core.api import load

    eom = load(None, model=False).vocab.eom
    assert r.stdout.decode().splitlines()[1:] == [str(eom)]
    assert b"warning: <stdin>: sequence 1: the model's answer is empty" in r.stderr
    assert b"--raw-prompt" in r.stderr


@pytest.mark.slow
def test_text_pipeline_composes_into_an_image_and_speech(tmp_path):
    r = shell('echo "a red circle" | aromni tokenize-text | aromni generate --task t2i --seed 3 '
              '| aromni detok -o x.png', tmp_path)
    assert r.returncode == 0, r.stderr
    png = (tmp_path / "x.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # one candidate of t2i decodes the same prompt with the same seed: the same picture
    aromni("t2i", "a red circle", "--candidates", "1", "--seed", "3", "--scale", "1", "-o", "t.png", "-q",
           cwd=tmp_path)
    assert (tmp_path / "t.png").read_bytes() == png
    r = shell('aromni tokenize-text "i have three cats" | aromni generate --task tts | aromni detok -o s.wav',
              tmp_path)
    assert r.returncode == 0, r.stderr
    wav = (tmp_path / "s.wav").read_bytes()
    assert wav[:4] == b"RIFF" and len(wav) > 44 + 16000  # at least half a second of 16-bit speech


@pytest.mark.slow
def test_tokenize_text_writes_the_models_ids_and_warns_on_empty(tmp_path):
    from aromni.core.api import load

    text = load(None, model=False).text
    r = aromni("tokenize-text", "a red circle", "  ", "hello")
    lines = r.stdout.decode().splitlines()
    assert lines[0].startswith("#aromni-layout=")
    assert [list(map(int, x.split())) for x in lines[1:]] == [text.encode("a red circle"), text.encode("hello")]
    assert b"argument 2" in r.stderr and b"warning" in r.stderr
    piped = aromni("tokenize-text", input=b"a red circle\n\nhello\n")
    assert piped.stdout == r.stdout
    aromni("tokenize-text", "a red circle", "-o", str(tmp_path / "t.json"), "-q")
    assert '"sequences"' in (tmp_path / "t.json").read_text()
    bad = aromni("tokenize-text", input=b"\xff\xfe\n", check=False)
    assert bad.returncode == 2 and b"line 1" in bad.stderr
    empty = aromni("tokenize-text", input=b"\n \n", check=False)
    assert empty.returncode == 2 and b"no text" in empty.stderr


@pytest.mark.slow
def test_generate_refuses_an_input_its_task_cannot_take():
    ids = aromni("tokenize-text", "hello", "-q").stdout
    r = aromni("generate", "--task", "asr", "-q", input=ids, check=False)
    assert r.returncode == 2 and b"asr takes one speech span" in r.stderr and r.stdout.count(b"\n") <= 1


# --- the templates, on a tiny layout --------------------------------------------------------------------
@pytest.fixture()
def ctx():
    from aromni.core.vocab import compact_layout

    v = compact_layout(text=256, image=64, audio=100, image_tokens=4)
    return PromptContext(v, lambda s: [v.text_start + (b % 256) for b in s.encode()])


def test_task_prompt_wraps_each_task_as_its_builder_does(ctx):
    v = ctx.vocab
    speech, image = audio_block([1, 2, 3], v), image_block([0, 1, 2, 3], v)
    text = ctx.encode("a red circle")
    assert task_prompt(ctx, "asr", speech) == (asr_prompt(ctx, [1, 2, 3]), [])
    assert task_prompt(ctx, "caption", image) == (caption_prompt(ctx, [0, 1, 2, 3]), [])
    assert task_prompt(ctx, "tts", text) == (tts_prompt(ctx, "a red circle") + [v.boa], [v.boa])
    assert task_prompt(ctx, "tts", text, compat=True) == (tts_prompt(ctx, "a red circle"), [])
    assert task_prompt(ctx, "t2i", text) == (t2i_prompt(ctx, "a red circle") + [v.boi], [v.boi])
    assert task_prompt(ctx, "s2i", speech) == (s2i_prompt(ctx, [1, 2, 3]) + [v.ins], [v.ins])
    assert task_prompt(ctx, "chat", text)[0] == chat_prompt(ctx, [], chat_turn(ctx, text="a red circle"))
    both = task_prompt(ctx, "chat", image + speech + text)[0]
    assert both == [v.bos] + chat_turn(ctx, image_codes=[[0, 1, 2, 3]], audio_codes=[1, 2, 3], append="a red circle")
    assert task_prompt(ctx, "text", text) == ([v.bos] + text, [])
    # an input that already starts with <s> is a prompt: sent as it is
    assert task_prompt(ctx, "asr", [v.bos] + text) == ([v.bos] + text, [])


@pytest.mark.parametrize("task, what", [("asr", "text"), ("caption", "speech"), ("tts", "image"), ("t2i", "speech"),
                                        ("s2i", "image"), ("asr", "two"), ("chat", "nothing"), ("tts", "special")])
def test_task_prompt_refuses_what_the_task_cannot_take(ctx, task, what):
    v = ctx.vocab
    ids = {"text": ctx.encode("hi"), "speech": audio_block([1], v), "image": image_block([0, 1, 2, 3], v),
           "two": audio_block([1], v) + audio_block([2], v), "nothing": [], "special": ctx.encode("hi") + [v.eom]}[what]
    with pytest.raises(InputError, match=f"{task} takes"):
        task_prompt(ctx, task, ids)
