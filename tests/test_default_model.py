"""The bundled default model (core/assets/default): loads with no --model, fits its budget, and fixed prompts
give outputs with the right properties, through the real CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from aromni.core.api import DEFAULT_DIR, default_model_path
from aromni.core.corpus import scenes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {k: v for k, v in os.environ.items() if k != "AROMNI_MODEL"} | {"OMP_NUM_THREADS": "2"}


def aromni(*args, input=None, cwd=None):
    r = subprocess.run([sys.executable, "-m", "aromni", *args, "-q"], input=input, capture_output=True, cwd=cwd,
                       env=ENV, timeout=300)
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr.decode(errors='replace')[-2000:]}"
    return r


def test_bundle_is_the_default_fits_the_budget_and_has_a_card():
    assert default_model_path() == DEFAULT_DIR
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(DEFAULT_DIR) for f in fs)
    assert size <= 40 * 2**20, size / 2**20
    meta = json.loads(open(os.path.join(DEFAULT_DIR, "aromni.json")).read())
    assert all(meta.get(f"{k}_tokenizer") for k in ("text", "image", "speech"))
    import yaml  # the recipe's decoding defaults travel with the bundle

    with open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "recipes", "default", "decode.yaml")) as f:
        assert meta["decode"] == yaml.safe_load(f)
    card = open(os.path.join(DEFAULT_DIR, "MODEL_CARD.md"), encoding="utf-8").read()
    for section in ("## Data", "## Quality", "## Limits"):
        assert section in card, section
    assert "not measured" not in card.split("## Quality")[1].split("\n## ")[0]


# Outputs are deterministic for a seed on one machine, but CPU kernels differ between machines and can flip a
# close argmax; so each check runs three fixed inputs and asks for at least two right (a broken model gets none).

# scenes of held-out attribute combinations of the corpus (seed 0): never seen in training
HELDOUT_SCENES = [
    {"background": "white", "objects": [{"shape": "triangle", "colour": "green", "size": "small", "position": "centre",
                                         "offset": [-2, 0]}]},
    {"background": "black", "objects": [{"shape": "star", "colour": "yellow", "size": "small", "position": "left",
                                         "offset": [-1, 1]}]},
    {"background": "grey", "objects": [{"shape": "star", "colour": "green", "size": "large", "position": "right",
                                        "offset": [0, -1]}]},
]


def test_captions_name_held_out_scenes(tmp_path):
    paths = []
    for i, attrs in enumerate(HELDOUT_SCENES):
        scenes.draw(attrs).save(tmp_path / f"s{i}.png")
        paths.append(str(tmp_path / f"s{i}.png"))
    texts = aromni("caption", *paths).stdout.decode().strip().splitlines()
    assert len(texts) == len(paths), texts
    right = [scenes.attrs_match(scenes.parse_caption(t), a) for t, a in zip(texts, HELDOUT_SCENES)]
    assert sum(right) >= 2, list(zip(texts, right))


# held-out prompts; one guided argmax drawing, the bundle's default, draws 72% of unseen combinations right (model
# card) and does not depend on the seed: on the build machine the last two are drawn right, the first comes out
# small and on the left
T2I_PROMPTS = ["a large green triangle in the centre", "a small purple star at the bottom",
               "a small blue square on the left"]


def test_t2i_draws_what_the_prompt_says(tmp_path):
    from PIL import Image

    right = []
    for i, prompt in enumerate(T2I_PROMPTS):
        aromni("t2i", prompt, "--seed", "0", "-o", str(tmp_path / f"{i}.png"))
        got = scenes.analyse(Image.open(tmp_path / f"{i}.png"))
        right.append((prompt, got["objects"], scenes.attrs_match(got, scenes.parse_caption(prompt))))
    assert sum(ok for *_, ok in right) >= 2, right


# training scenes asked for in other words: request frames, a synonym ("big"), a capital and a full stop (the
# default corpus trains four caption forms only; docs/default-model.md, "Paraphrased prompts"). On the build machine
# all four are drawn right by the default guided argmax drawing, and so are "please show me a tiny red circle" and
# "a huge green box in the middle".
PARAPHRASES = {"draw a big red circle on the left.": "a large red circle on the left",
               "please show me a small blue square at the top": "a small blue square at the top",
               "Draw a large purple circle at the bottom.": "a large purple circle at the bottom",
               "please draw a small cyan triangle on the left": "a small cyan triangle on the left"}


def test_t2i_follows_a_paraphrased_prompt(tmp_path):
    from PIL import Image

    right = []
    for i, (prompt, caption) in enumerate(PARAPHRASES.items()):
        aromni("t2i", prompt, "--seed", "0", "--scale", "1", "-o", str(tmp_path / f"{i}.png"))
        got = scenes.analyse(Image.open(tmp_path / f"{i}.png"))
        right.append((prompt, got["objects"], scenes.attrs_match(got, scenes.parse_caption(caption))))
    assert sum(ok for *_, ok in right) >= 3, right


@pytest.mark.slow
def test_best_of_n_follows_a_paraphrased_prompt(tmp_path):
    """Best of 8 on the same paraphrases: the captioner's score of words it never says is noise, the candidates'
    scene votes keep the pick on what the drawer read."""
    from PIL import Image

    right = []
    for i, (prompt, caption) in enumerate(PARAPHRASES.items()):
        aromni("t2i", prompt, "--seed", "0", "--candidates", "8", "--scale", "1", "-o", str(tmp_path / f"{i}.png"))
        got = scenes.analyse(Image.open(tmp_path / f"{i}.png"))
        right.append((prompt, got["objects"], scenes.attrs_match(got, scenes.parse_caption(caption))))
    assert sum(ok for *_, ok in right) >= 3, right


@pytest.mark.slow
def test_asr_of_a_neural_voice_is_right_or_flagged(tmp_path):
    """A clip in a neural voice (hibari, Apache-2.0) of corpus sentences: each transcript is right or comes with
    the low-confidence warning, never confidently wrong (the bundled model has heard espeak-ng voices only: it
    gets them wrong, and its codec error says so)."""
    from aromni.core.audio_io import write_wav
    from aromni.core.corpus import voices as V
    from aromni.core.eval.wer import word_errors

    if V.missing("hibari"):
        pytest.skip(V.missing("hibari"))
    texts = ["the cat is sleeping", "a large red circle on the left", "where is my door"]
    paths = []
    for i, text in enumerate(texts):
        write_wav(str(tmp_path / f"{i}.wav"), V.synthesize("hibari:heart", text, 16000, seed=0), 16000)
        paths.append(str(tmp_path / f"{i}.wav"))
    got = [json.loads(x) for x in aromni("asr", "--json", *paths).stdout.decode().splitlines()]
    wrong_and_sure = [(t, g["text"]) for t, g in zip(texts, got)
                      if word_errors(t, g["text"]).wer > 0.2 and not g["low_confidence"]]
    assert wrong_and_sure == []


@pytest.mark.slow
def test_asr_hears_speech_at_any_level(tmp_path):
    """The codec heard its training voices at one level: quiet, loud (clipped a little) and offset recordings are
    brought to that level first and come back as the clip at its own level does."""
    import numpy as np

    from aromni.core.audio_io import write_wav
    from aromni.core.corpus import speech

    if speech.espeak_path() is None:
        pytest.skip("espeak-ng is not installed")
    wav = speech.synthesize("the cat is sleeping", speech.Voice("en-us+m3", 165), 16000)
    takes = {"as said": wav, "-30 dB": wav * 10 ** (-30 / 20), "+6 dB": np.clip(wav * 2, -1, 1),
             "DC offset": wav * 0.5 + 0.3}
    for name, x in takes.items():
        write_wav(str(tmp_path / f"{name}.wav"), x.astype(np.float32), 16000)
    got = aromni("asr", *(str(tmp_path / f"{n}.wav") for n in takes)).stdout.decode().splitlines()
    assert got == ["the cat is sleeping"] * len(takes)


def test_tts_then_asr_round_trip(tmp_path):
    from aromni.core.eval.wer import word_errors

    errors = []
    for i, text in enumerate(["a large red circle on the left", "a large red star on the right",
                              "a large cyan star at the bottom"]):
        aromni("tts", text, "--seed", "0", "-o", str(tmp_path / f"{i}.wav"))
        hyp = aromni("asr", str(tmp_path / f"{i}.wav")).stdout.decode().strip()
        errors.append((text, hyp, word_errors(text, hyp).wer))
    assert sum(wer <= 0.15 for *_, wer in errors) >= 2, errors


def _agree(a: dict, b: dict) -> int:
    """Attributes of the first object that two parsed captions share."""
    if not a.get("objects") or not b.get("objects"):
        return 0
    return sum(a["objects"][0].get(k) == v for k, v in b["objects"][0].items())


@pytest.mark.slow
def test_readme_main_job(tmp_path):
    """scripts/demo.sh, the main job of the README's first command: speech, its transcript, the scene the
    transcript describes and that scene's caption, with the bundled model."""
    env = ENV | {"PATH": os.path.dirname(sys.executable) + os.pathsep + ENV.get("PATH", "")}
    out = tmp_path / "out"
    r = subprocess.run(["bash", os.path.join(ROOT, "scripts", "demo.sh"), str(out)], capture_output=True,
                       env=env, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    lines = r.stdout.decode().splitlines()
    assert lines[0].startswith("asr:") and lines[1].startswith("caption:"), lines
    assert (out / "speech.wav").stat().st_size > 16000  # > 0.5 s of 16-bit 16 kHz audio
    said = scenes.parse_caption((out / "transcript.txt").read_text())
    drawn = scenes.parse_caption((out / "caption.txt").read_text())
    want = scenes.parse_caption("a large red circle on the left")
    # on the build machine all four attributes survive the whole chain; allow one slip on other CPUs
    assert _agree(said, want) >= 3, said
    assert _agree(drawn, said) >= 3, (said, drawn)
