"""The default-model recipe (recipes/default): configs are valid and consistent with their CI variant, and the
CI variant of scripts/build_default_model.sh builds a bundle end to end that loads and runs every task."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "recipes", "default")
SCRIPT = os.path.join(ROOT, "scripts", "build_default_model.sh")
STAGES = ("bpe", "image_vq", "codec", "pretokenize", "lm")
SELF_STAGES = ("pretokenize_self", "pretokenize_voices", "selftrain")  # SELFTRAIN=1
KINDS = {"pretokenize_self": "pretokenize", "pretokenize_voices": "pretokenize", "selftrain": "lm"}
# what the CI variant may change: sizes, lengths and step counts, never the recipe itself
SIZE_KEYS = {"tokenizer.vocab_size", "tokenizer.preset", "tokenizer.max_items", "data.batch_size", "data.max_len",
             "data.seq_len", "optim.lr", "optim.warmup_steps", "train.max_steps", "train.eval_every",
             "train.eval_batches", "train.log_every", "checkpoint.every", "model.config"}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict) and k not in ("tokenizers",):
            out.update(_flat(v, key))
        else:
            out[key] = v
    return out


@pytest.mark.parametrize("stage", STAGES + SELF_STAGES)
def test_configs_load_and_ci_differs_only_in_size(stage):
    from aromni.core.train.config import load_config

    full, ci = (os.path.join(RECIPE, *p, f"{stage}.yaml") for p in ((), ("ci",)))
    for path in (full, ci):
        assert load_config(path).kind == KINDS.get(stage, stage)
    with open(full) as f:
        a = _flat(yaml.safe_load(f))
    with open(ci) as f:
        b = _flat(yaml.safe_load(f))
    assert set(a) == set(b), f"{stage}: keys differ: {set(a) ^ set(b)}"
    changed = {k for k in a if a[k] != b[k]}
    assert changed <= SIZE_KEYS, f"{stage}: the CI variant changes more than sizes: {changed - SIZE_KEYS}"


@pytest.mark.parametrize("name", ["mix.yaml", "decode.yaml"])
def test_mix_and_decode_defaults_are_the_same_in_ci(name):
    with open(os.path.join(RECIPE, name)) as f, open(os.path.join(RECIPE, "ci", name)) as g:
        assert yaml.safe_load(f) == yaml.safe_load(g)


def _steps():
    """recipes/default/steps.py as a module (it is a script, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("default_steps", os.path.join(RECIPE, "steps.py"))
    steps = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(steps)
    return steps


def test_mix_repeats_each_task_and_drills_apart(tmp_path):
    steps = _steps()
    (tmp_path / "mix.yaml").write_text("tts: 3\ntts_drill: 1\nasr: 0\nasr_joined: 2\n")
    lines = [{"task": "tts", "text": "a"}, {"task": "tts", "text": "b c", "drill": True}, {"task": "asr"},
             {"task": "caption"}, {"task": "tts", "text": "d", "chunk": True}, {"task": "asr", "joined": True}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(d) + "\n" for d in lines))
    counts = steps.write_mix(str(tmp_path / "mix.yaml"), str(tmp_path / "train.jsonl"), str(tmp_path / "mix.jsonl"))
    assert counts == {"tts": 3, "tts_drill": 1, "asr": 0, "caption": 1, "tts_chunk": 1, "asr_joined": 2}
    out = [json.loads(x) for x in (tmp_path / "mix.jsonl").read_text().splitlines()]
    assert [d["text"] for d in out if d["task"] == "tts"] == ["a", "a", "a", "b c", "d"]
    assert [d.get("joined") for d in out if d["task"] == "asr"] == [True, True]


def test_self_t2i_keeps_only_drawings_its_captioner_reads_as_the_scene(tmp_path):
    """The bundled model draws each request; a drawing is kept only when the model's own caption of it names the
    line's scene. Lines whose scene contradicts their text are drawn as the text says and must be dropped."""
    from aromni.core import api, tasks
    from aromni.core.corpus.scenes import attrs_match, parse_caption
    from PIL import Image

    steps = _steps()
    obj = lambda s, c, z, p: {"shape": s, "colour": c, "size": z, "position": p, "offset": [0, 0]}  # noqa: E731
    right = [("a large red circle on the left", obj("circle", "red", "large", "left")),
             ("Draw a small blue square at the top.", obj("square", "blue", "small", "top")),
             ("a large yellow star on the right", obj("star", "yellow", "large", "right"))]
    wrong = [(t, obj("triangle", "green", "small", "bottom"))
             for t in ("a large purple circle on the right", "Show me a small blue star at the top.")]
    lines = [{"id": f"t{i}", "task": "t2i", "split": "train", "text": t, "attrs": {"background": "white",
              "objects": [o]}} for i, (t, o) in enumerate(right + wrong)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(d) + "\n" for d in lines))
    got = steps.write_self_t2i(api.DEFAULT_DIR, str(tmp_path / "train.jsonl"), str(tmp_path / "self_t2i.jsonl"),
                               cfg_text=1.5)
    kept = [json.loads(x) for x in (tmp_path / "self_t2i.jsonl").read_text().splitlines()]
    assert got == {"requests": 5, "kept": len(kept)} and kept
    by_text = {d["text"]: d for d in lines}
    assert all(d["attrs"] == by_text[d["text"]]["attrs"] and d["task"] == "t2i" for d in kept)
    assert not [d for d in kept if d["attrs"]["objects"][0]["shape"] == "triangle"]  # contradicted: dropped
    omni = api.load(api.DEFAULT_DIR)
    said = tasks.caption(omni, [Image.open(tmp_path / d["image"]) for d in kept], seed=0)
    assert all(attrs_match(parse_caption(t), d["attrs"]) for t, d in zip(said, kept)), said


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng (scripts/test.sh installs it)")
def test_voice_lines_say_training_texts_in_many_voices_never_the_heldout_one(tmp_path):
    """Each training ASR text in four pool voices and each spoken caption in two more; no clip in any voice with the
    held-out voice's variant; the same seed gives the same lines."""
    steps = _steps()
    pool = steps.voice_pool(("f4",))
    assert len(pool) > 500 and "en-us+f4" not in pool and not [v for v in pool if v.endswith("+f4")]
    assert {"en-us", "en-gb+m4", "en-us+f5"} <= set(pool)
    obj = {"shape": "star", "colour": "red", "size": "large", "position": "left", "offset": [0, 0]}
    rows = [{"id": "a1", "task": "asr", "text": "the cat is asleep", "voice": "en-us"},
            {"id": "a2", "task": "asr", "text": "the cat is asleep", "voice": "en-gb"},
            {"id": "a3", "task": "asr", "text": "open the door", "voice": "en-us"},
            {"id": "j", "task": "asr", "text": "open the door", "joined": True},
            {"id": "s", "task": "s2i", "text": "a large red star on the left", "image": "img/x.png",
             "attrs": {"background": "white", "objects": [obj]}},
            {"id": "t", "task": "tts", "text": "hello there"}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(d) + "\n" for d in rows))
    (tmp_path / "corpus.json").write_text(json.dumps({"sample_rate": 16000}))
    got = steps.write_voice_lines(str(tmp_path / "train.jsonl"), str(tmp_path / "voices.jsonl"))
    assert (got["asr"], got["s2i"], got["heldout_variants"]) == (8, 2, ["f4"])
    first = (tmp_path / "voices.jsonl").read_text()
    lines = [json.loads(x) for x in first.splitlines()]
    assert sorted(d["text"] for d in lines if d["task"] == "asr") == ["open the door"] * 4 + ["the cat is asleep"] * 4
    s2i = [d for d in lines if d["task"] == "s2i"]
    assert [(d["image"], d["attrs"]) for d in s2i] == [("img/x.png", rows[4]["attrs"])] * 2
    assert all(d["voice"] in pool and (tmp_path / d["audio"]).stat().st_size > 1000 for d in lines)
    steps.write_voice_lines(str(tmp_path / "train.jsonl"), str(tmp_path / "voices.jsonl"))
    assert (tmp_path / "voices.jsonl").read_text() == first


def test_voice_lines_wider_sentences_are_said_and_spoken_but_never_held_out(tmp_path):
    """--wider: new sentences of the corpus's words in pool voices (ASR) and in the output voice, whole and in
    pieces of 1-3 words (TTS); none is a training text or holds a held-out one."""
    steps = _steps()
    from aromni.core.corpus.sentences import wider

    rows = [{"id": "a1", "task": "asr", "text": "i have eleven apples", "voice": "en-us"}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(d) + "\n" for d in rows))
    (tmp_path / "heldout.jsonl").write_text(json.dumps({"id": "h", "task": "asr", "text": "my dog is red"}) + "\n")
    (tmp_path / "corpus.json").write_text(json.dumps({"sample_rate": 16000, "config": {"voices": "espeak"}}))
    kept = steps.wider_sentences(wider(), rows, str(tmp_path / "heldout.jsonl"))
    assert "i have eleven apples" not in kept and "my dog is red" not in kept and "my dog is green" in kept
    assert len(kept) == len(wider()) - 2
    got = steps.write_voice_lines(str(tmp_path / "train.jsonl"), str(tmp_path / "voices.jsonl"), asr_per_text=0,
                                  s2i_per_line=0, limit=3, wider=2)
    lines = [json.loads(x) for x in (tmp_path / "voices.jsonl").read_text().splitlines()]
    said = sorted({d["text"] for d in lines if d["task"] == "asr"})
    assert (got["wider"], got["asr"], got["tts"]) == (3, 6, 3) and len(said) == 3 and set(said) <= set(kept)
    tts = [d for d in lines if d["task"] == "tts"]
    assert all(d["voice"] == "en-us" and d["speed"] == 160 for d in tts)
    pieces = [d["text"] for d in tts if d.get("chunk")]
    assert len(pieces) == got["chunk"] and all(1 <= len(p.split()) <= 3 for p in pieces)
    assert sorted(" ".join(pieces).split()) == sorted(" ".join(said).split())
    assert all((tmp_path / d["audio"]).stat().st_size > 1000 for d in lines)


def test_small_config_fits_the_bundle_budget():
    """The shipped LM (fp16) plus the small tokenizers must stay under the 40 MB bundle budget."""
    from aromni.core.image_tokenizer import build_image_tokenizer
    from aromni.core.model import CONFIGS
    from aromni.core.speech_tokenizer import build_speech_tokenizer

    lm = CONFIGS["small"].num_params()
    vq = sum(p.numel() for p in build_image_tokenizer("small").model.state_dict().values())
    codec = sum(p.numel() for p in build_speech_tokenizer("small").net.state_dict().values())
    assert 2 * (lm + vq + codec) / 1e6 < 39.0, (lm, vq, codec)


def _run(args, cwd, env_extra=None, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHON=sys.executable, **(env_extra or {}))
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, **kw)


def test_build_script_refuses_a_missing_recipe_folder(tmp_path):
    r = _run(["bash", SCRIPT, "--ci", str(tmp_path / "out")], tmp_path, {"RECIPE": str(tmp_path / "nowhere")})
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "not a recipe folder" in r.stderr and not (tmp_path / "out").exists()


def _aromni(*args, cwd):
    r = _run([sys.executable, "-m", "aromni", *args], cwd)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


@pytest.mark.slow
def test_ci_recipe_end_to_end(tmp_path):
    out = tmp_path / "build"
    r = _run(["bash", SCRIPT, "--ci", "--no-eval", str(out)], ROOT, env_extra={"RERUN": "20", "SELFTRAIN": "0"},
             timeout=900)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])
    rerun = json.loads((out / "rerun.json").read_text())  # the LM trained again: same machine, same losses
    assert (rerun["steps"], rerun["last"]) == (2, 20) and rerun["identical"], rerun
    bundle = out / "bundle"
    meta = json.loads((bundle / "aromni.json").read_text())
    for kind in ("text", "image", "speech"):
        assert meta.get(f"{kind}_tokenizer"), kind
    # the bundle's own low-confidence rules, calibrated on its held-out lines
    assert [[m, op] for m, op, _ in meta["confidence"]["asr"]] == [["first_logprob", "<"], ["codec_error", ">"]]
    assert [[m, op] for m, op, _ in meta["confidence"]["caption"]] == [["avg_logprob", "<"], ["image_error", ">"]]
    assert "| calibrate |" in (bundle / "MODEL_CARD.md").read_text()
    card = (bundle / "MODEL_CARD.md").read_text()
    assert "## Limits" in card and "| lm |" in card
    quality = card.split("## Quality")[1].split("\n## ")[0]
    assert [t for t in ("t2i", "caption", "asr", "tts", "s2i") if f"| {t} |" not in quality] == []
    ceil = json.loads((out / "ceilings.json").read_text())  # the self judge cannot score speech before the LM
    assert ceil["image"]["n"] == 8 and 0 <= ceil["image"]["analyser_on_reconstructions"] <= 1
    assert "not trained yet" in ceil["speech"]["judge_error"] and "Tokenizer ceilings" in card
    assert sorted(os.listdir(bundle / "recipe")) == sorted([f"{s}.yaml" for s in STAGES] + ["mix.yaml", "decode.yaml"])
    with open(os.path.join(RECIPE, "ci", "decode.yaml")) as f:
        assert meta["decode"] == yaml.safe_load(f)
    assert "Rebuild check" in card and "bit-identical" in card
    # vocabulary = compact layout of the three tokenizers; weights shipped as fp16
    from safetensors import safe_open

    with safe_open(str(bundle / "model.safetensors"), "pt") as f:
        assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"F16"}
    assert meta["model"]["vocab_size"] == meta["vocab"]["vocab_size"]

    # every task decodes with the bundle, through the CLI
    m = ["--model", str(bundle), "--seed", "0"]
    _aromni("tts", "a red circle", "-o", str(tmp_path / "s.wav"), *m, cwd=tmp_path)
    assert (tmp_path / "s.wav").stat().st_size > 44
    _aromni("asr", str(tmp_path / "s.wav"), *m, cwd=tmp_path)
    _aromni("t2i", "a blue square on the left", "-o", str(tmp_path / "i.png"), *m, cwd=tmp_path)
    from PIL import Image

    assert Image.open(tmp_path / "i.png").size[0] > 0
    _aromni("caption", str(tmp_path / "i.png"), *m, cwd=tmp_path)

    # resumable: a rerun skips every finished stage; a redone LM stage resumes from its last checkpoint
    r = _run(["bash", SCRIPT, "--ci", "--no-eval", str(out)], ROOT, env_extra={"SELFTRAIN": "0"}, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "lm: done already" in r.stderr and "codec: done already" in r.stderr
    (out / "lm" / "DONE").unlink()
    (out / "bundle" / "DONE").unlink()
    r = _run(["bash", SCRIPT, "--ci", "--no-eval", str(out)], ROOT, env_extra={"SELFTRAIN": "0"}, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from" in r.stderr and "lm: finished" in r.stderr

    # SELFTRAIN=1 (the default): ASR lines of the LM's own speech, more steps from its bundle; the bundle is that LM
    (out / "bundle" / "DONE").unlink()
    r = _run(["bash", SCRIPT, "--ci", "--no-eval", str(out)], ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(x) for x in (out / "corpus" / "self_asr.jsonl").read_text().splitlines()]
    assert len(lines) == 8 and all((out / "corpus" / d["audio"]).stat().st_size > 44 for d in lines)
    assert {d["task"] for d in lines} == {"asr"}
    voiced = [json.loads(x) for x in (out / "corpus" / "voice_lines.jsonl").read_text().splitlines()]
    assert sum(d["task"] == "asr" for d in voiced) == 8 * 8 + 8 * 4  # 8 texts in 8 voices, 8 new sentences in 4
    assert {d["task"] for d in voiced} == {"asr", "s2i", "tts"}
    assert sorted(os.listdir(bundle / "recipe")) == sorted([f"{s}.yaml" for s in STAGES + SELF_STAGES]
                                                           + ["mix.yaml", "decode.yaml"])
    with safe_open(str(out / "selftrain" / "bundle" / "model.safetensors"), "pt") as a, \
            safe_open(str(out / "lm" / "bundle" / "model.safetensors"), "pt") as b:
        k = sorted(a.keys())[0]
        assert not bool((a.get_tensor(k) == b.get_tensor(k)).all())  # trained further
    assert "- Self-training: the LM's own TTS of 8 training texts" in (bundle / "MODEL_CARD.md").read_text()
    assert "calibrate: running" in r.stderr and json.loads((bundle / "aromni.json").read_text())["confidence"]
    _aromni("asr", str(tmp_path / "s.wav"), *m, cwd=tmp_path)


@pytest.mark.slow
def test_ci_recipe_with_the_wide_corpus(tmp_path):
    """CORPUS=ci-wide: many engines' voices, phrasing groups and three held-out voices go through every stage;
    the card names each engine with its licence."""
    from aromni.core.corpus import voices as V

    why = next((V.missing(e) for e in ("hibari", "kokoro", "flite") if V.missing(e)), None)
    if why:
        pytest.skip(why)
    out = tmp_path / "build"
    r = _run(["bash", SCRIPT, "--ci", str(out)], ROOT, timeout=1200,
             env_extra={"CORPUS": "ci-wide", "SELFTRAIN": "0", "EVAL_SAMPLE": "asr=6,caption=4,s2i=4,t2i=6,tts=4"})
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])
    card = (out / "bundle" / "MODEL_CARD.md").read_text()
    assert "output voice hibari:heart; held-out voices en-us+f4, flite:rms, kokoro:jf_gongitsune" in card
    assert all(f"- Speech by {x}" in card for x in ("espeak-ng", "flite", "`hibari-tts`", "Kokoro-82M"))
    assert "| t2i, held-out phrasing |" in card and "espeak-ng's" not in card
    # the evaluation read a sample of the held-out split with every group, and the card says how to write it
    assert "steps.py sample corpus/heldout.jsonl corpus/heldout-sample.jsonl --n asr=6," in card
    assert "| asr, held-out voice |" in card


def test_card_quality_rows(tmp_path):
    """The model card's quality table: one TTS row per judge, which caption words each judge heard right, and the
    speaker groups (speech -> image judged in the training voices, like ASR)."""
    steps = _steps()
    (tmp_path / "eval").mkdir()
    heard = {"shape": 0.99, "colour": 0.92, "size": 0.97, "position": 0.27}
    rep = {"data": {"n": 177}, "decoding": {"candidates": 1},
           "metrics": {"wer": 0.2, "judges": {"whisper": {"wer": 0.2}, "self": {"wer": 0.12}},
                       "caption_attrs": {"n": 150, "whisper": heard, "self": heard}}}
    (tmp_path / "eval" / "tts.json").write_text(json.dumps(rep))
    rows = steps._quality(steps.collect_record(str(tmp_path), RECIPE)["eval"]["reports"])
    assert "| tts | wer | 20.0% (n=177, judge whisper) | <= 15% | no |" in rows
    assert "| tts | wer | 12.0% (n=177, judge self) | <= 15% | yes |" in rows
    assert ("| tts, spoken captions | attribute heard right, judge whisper | shape 99%, colour 92%, size 97%, "
            "position 27% (n=150) | | |") in rows
    assert any(r.startswith("| t2i | scp_accuracy | not measured") for r in rows)
    # speech -> image: the target is judged in the training voices (as ASR's); all clips and the held-out voice beside
    s2i = {"data": {"n": 300}, "decoding": {"candidates": 16},
           "metrics": {"attr_accuracy": 0.45, "by_group": {"train voices": {"attr_accuracy": 0.85, "n": 150},
                                                           "held-out voice": {"attr_accuracy": 0.06, "n": 150}}}}
    (tmp_path / "eval" / "s2i.json").write_text(json.dumps(s2i))
    rows = steps._quality(steps.collect_record(str(tmp_path), RECIPE)["eval"]["reports"])
    assert "| s2i, all voices | attr_accuracy | 45.0% (n=300, best of 16) |  |  |" in rows
    assert "| s2i, train voices | attr_accuracy | 85.0% (n=150) | >= 70% | yes |" in rows
    assert "| s2i, held-out voice | attr_accuracy | 6.0% (n=150) |  |  |" in rows


def test_card_low_confidence_table(tmp_path):
    """The card's low-confidence section: the bundle's rules, and from calibration.json how often they flag the
    in-domain half they were not set on and each out-of-domain group, with the out-of-domain total."""
    steps = _steps()
    cal = {"asr": {"rules": [["first_logprob", "<", -1.25]],
                   "groups": {"in-domain (held-out corpus clips), half B": {"n": 150, "flagged": 3},
                              "real speech, librivox": {"n": 5, "flagged": 5},
                              "espeak-ng, everyday sentences": {"n": 20, "flagged": 1}}}}
    (tmp_path / "calibration.json").write_text(json.dumps(cal))
    rec = steps.collect_record(str(tmp_path), RECIPE)
    assert rec["confidence"] == {"asr": {"in-domain (held-out corpus clips), half B": [3, 150],
                                         "real speech, librivox": [5, 5], "espeak-ng, everyday sentences": [1, 20]}}
    rules = {"asr": [["first_logprob", "<", -1.25], ["codec_error", ">", 0.0175]]}
    table = steps._confidence_rows(rules, rec["confidence"])
    assert ("| asr | `first_logprob` < -1.25 or `codec_error` > 0.0175 | 2.0% (n=150) | **24.0% (n=25)**: real "
            "speech, librivox 100.0% (n=5); espeak-ng, everyday sentences 5.0% (n=20) |") in table
    assert steps._confidence_rows({}, None).startswith("Not calibrated")


def test_committed_card_is_what_the_generator_writes():
    """core/assets/default/MODEL_CARD.md is generated: the template filled from the bundle's aromni.json, weights
    and build record (build.json) gives it byte for byte."""
    steps = _steps()
    bundle = os.path.join(ROOT, "core", "assets", "default")
    with open(os.path.join(bundle, "MODEL_CARD.md"), encoding="utf-8") as f:
        committed = f.read()
    assert steps.render_card(bundle) == committed
    assert "{" not in committed.replace("{ci_", "")  # every template field was filled


def test_card_from_a_build_record(tmp_path):
    """write_card with a build folder records its numbers in the bundle's build.json; without one it renders from
    that record alone (the build folder may be gone)."""
    import shutil

    steps = _steps()
    bundle = tmp_path / "bundle"
    shutil.copytree(os.path.join(ROOT, "core", "assets", "default"), bundle)
    build = tmp_path / "build"
    (build / "lm").mkdir(parents=True)
    (build / "lm" / "metrics.jsonl").write_text(json.dumps({"step": 5, "loss": 1.6, "ntp": 1.3}) + "\n"
                                                + json.dumps({"step": 7, "loss": 1.5, "ntp": 1.25, "val_loss": 2.0,
                                                              "val_ntp": 1.75}) + "\n")
    (build / "times.tsv").write_text("lm\t65\t130\nlm\t5\t10\nrerun\t9\t9\n")
    (build / "notes.json").write_text(json.dumps(["The LM ran twice."]))
    steps.write_card(str(bundle), str(build), RECIPE + "/ci")
    rec = json.loads((bundle / "build.json").read_text())
    assert rec["ci"] and rec["lm"] == {"step": 7, "loss": 1.5, "ntp": 1.25, "val_ntp": 1.75}
    card = (bundle / "MODEL_CARD.md").read_text()
    assert "(CI variant" in card and "- LM: 7 steps, final training loss 1.5000 (NTP 1.2500), held-out NTP 1.7500" \
        in card
    assert "| lm | 1 min 10 s | 2 min 20 s |" in card and "| rerun (check, not in the total) | 0 min 09 s |" in card
    assert "The held-out evaluation has not been run" in card
    assert "\n- The LM ran twice.\n- Rebuild check" in card
    shutil.rmtree(build)
    (bundle / "MODEL_CARD.md").unlink()
    steps.write_card(str(bundle))
    assert (bundle / "MODEL_CARD.md").read_text() == card


def test_heldout_sample_keeps_every_group_and_the_card_names_it(tmp_path):
    """steps.py sample: N lines per task split over the task's groups, evenly spaced, in a fixed order; the card's
    evaluation command then names the sample and how to write it again."""
    steps = _steps()
    lines = ([{"task": "asr", "voice_heldout": h, "text": f"a{h}{i}"} for h in (False, True) for i in range(10)]
             + [{"task": "t2i", "group": g, "text": f"t{g}{i}"} for g in ("canonical", "held-out phrasing")
                for i in range(6)] + [{"task": "text", "text": f"x{i}"} for i in range(5)])
    src = tmp_path / "heldout.jsonl"
    src.write_text("".join(json.dumps(d) + "\n" for d in lines))
    got = steps.write_sample(str(src), str(tmp_path / "s.jsonl"), {"asr": 5, "t2i": 4})
    assert got == {"asr": 5, "t2i": 4}
    rows = [json.loads(x)["text"] for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    # held-out voice before training voices (sorted group names), the remainder to the first group
    assert rows == ["aTrue0", "aTrue3", "aTrue6", "aFalse0", "aFalse5",
                    "tcanonical0", "tcanonical3", "theld-out phrasing0", "theld-out phrasing3"]
    assert steps.write_sample(str(src), str(tmp_path / "t.jsonl"), {"text": 50}) == {"text": 5}
    with pytest.raises(SystemExit, match="same folder"):
        steps.write_sample(str(src), str(tmp_path / "sub" / "s.jsonl"), {"asr": 5})
    with pytest.raises(SystemExit, match="no caption lines"):
        steps.write_sample(str(src), str(tmp_path / "s.jsonl"), {"caption": 5})
    (tmp_path / "eval").mkdir()
    for task, n in (("asr", 120), ("caption", 60)):
        (tmp_path / "eval" / f"{task}.json").write_text(json.dumps(
            {"data": {"n": n, "path": "/b/corpus/heldout-sample.jsonl"}, "seed": 0, "metrics": {"wer": 0.1}}))
    reports = steps.collect_record(str(tmp_path), RECIPE)["eval"]["reports"]
    assert steps._eval_cmd(reports, ["whisper"]) == (
        "recipes/default/steps.py sample corpus/heldout.jsonl corpus/heldout-sample.jsonl --n asr=120,caption=60 "
        "&& scripts/eval_default.py --data corpus/heldout-sample.jsonl --model bundle --judge whisper --seed 0 "
        "--batch-size 32")
