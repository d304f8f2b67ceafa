"""`aromni eval` and `aromni plot` through the real CLI, on the tiny random bundle (garbage outputs: these
tests check the pipeline and the report, not quality)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from aromni.core.eval.judge import whisper_unavailable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_MPL = __import__("importlib").util.find_spec("matplotlib") is not None
FAST = ["--max-new-tokens", "6", "--device", "cpu", "-q"]


def aromni(*args, cwd=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "aromni", *map(str, args)], capture_output=True, env=env,
                          cwd=cwd or ROOT, timeout=300)


def ok_json(r) -> dict:
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout)


def _wav(path, seconds, seed, sr=16000):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    syllables = np.sin(2 * np.pi * 4 * t) > -0.3  # a level that rises and falls, as speech does (not "no speech")
    wav = 0.3 * np.sin(2 * np.pi * 220 * t) * syllables + 0.02 * rng.standard_normal(t.size)
    sf.write(path, wav.astype(np.float32), sr)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A tiny manifest in the corpus format (all tasks, heldout + one train line) and a LibriSpeech directory."""
    from aromni.core.corpus.scenes import caption, draw

    root = tmp_path_factory.mktemp("evaldata")
    (root / "wav").mkdir()
    (root / "img").mkdir()
    scenes = [{"background": "white", "objects": [{"shape": "circle", "colour": "red", "size": "small",
                                                  "position": "left"}]},
              {"background": "black", "objects": [{"shape": "square", "colour": "blue", "size": "large",
                                                  "position": "centre"}]}]
    lines = []
    for i, sc in enumerate(scenes):
        _wav(root / "wav" / f"{i}.wav", 0.5 + 0.25 * i, i)
        draw(sc).save(root / "img" / f"{i}.png")
        cap = caption(sc)
        lines += [{"task": "asr", "split": "heldout", "audio": f"wav/{i}.wav", "text": f"Hello world number {i}."},
                  {"task": "tts", "split": "heldout", "text": f"say {i}"},
                  {"task": "caption", "split": "heldout", "image": f"img/{i}.png", "text": cap, "attrs": sc},
                  {"task": "caption", "split": "heldout", "image": f"img/{i}.png", "text": caption(sc, 1)},
                  {"task": "t2i", "split": "heldout", "text": cap, "attrs": sc},
                  {"task": "s2i", "split": "heldout", "audio": f"wav/{i}.wav", "text": cap, "attrs": sc}]
    lines.append({"task": "asr", "split": "train", "audio": "wav/0.wav", "text": "not evaluated"})
    (root / "manifest.jsonl").write_text("".join(json.dumps(d) + "\n" for d in lines))
    ls = root / "LibriSpeech" / "test-clean" / "19" / "198"
    ls.mkdir(parents=True)
    for j in range(2):
        _wav(ls / f"19-198-000{j}.wav", 0.4, 10 + j)
        data, sr = sf.read(ls / f"19-198-000{j}.wav")
        sf.write(ls / f"19-198-000{j}.flac", data, sr)
        os.remove(ls / f"19-198-000{j}.wav")
    (ls / "19-198.trans.txt").write_text("19-198-0000 NORTHANGER ABBEY\n19-198-0001 THIS LITTLE WORK\n")
    return root


def _common_report_checks(rep, task, tiny_bundle, n):
    assert rep["schema"] == "aromni-eval/1" and rep["task"] == task
    assert rep["aromni_version"] and rep["created"].endswith("Z")
    assert rep["device"] == "cpu" and rep["dtype"] == "float32" and rep["seed"] == 0
    assert rep["decoding"]["max_new_tokens"] == 6 and rep["decoding"]["task"] == task
    assert os.path.samefile(rep["model"]["path"], tiny_bundle) and rep["model"]["params"] > 0
    assert rep["data"]["n"] == n == len(rep["items"]) == rep["metrics"]["n"]
    assert len(rep["data"]["sha256"]) == 64
    assert rep["timings"]["eval_s"] > 0
    json.dumps(rep)  # the report is plain JSON


@pytest.fixture(scope="module")
def omni(tiny_bundle):
    from aromni.core.api import load

    return load(tiny_bundle, device="cpu", dtype="fp32")


def run_eval(omni, task, data, **kw):
    from aromni.core.eval.runner import EvalConfig, evaluate

    kw.setdefault("decode", {"max_new_tokens": 6})
    return evaluate(EvalConfig(task=task, data=str(data), device="cpu", quiet=True, **kw), omni=omni)


# --- through the CLI ---------------------------------------------------------------------------
def test_cli_eval_asr_json_table_and_compare(tiny_bundle, corpus, tmp_path):
    rep = ok_json(aromni("eval", "asr", "--model", tiny_bundle, "--data", corpus / "manifest.jsonl", "--json",
                         "-b", 2, *FAST))
    _common_report_checks(rep, "asr", tiny_bundle, 2)  # the train line is not evaluated
    m = rep["metrics"]
    assert m["ref_words"] == 8 and m["wer"] == m["errors"] / 8
    assert rep["settings"]["normalizer"] == "aromni-en-2" and rep["batch_size"] == 2
    assert all(isinstance(it["hyp"], str) and it["audio_s"] > 0 for it in rep["items"])
    # the confidence of each answer (as asr --json prints it) and its mean; a tiny test model is never flagged
    assert all(it["avg_logprob"] <= 0 and it["codec_error"] >= 0 and it["low_confidence"] is False
               for it in rep["items"] if it["avg_logprob"] is not None)
    assert m["low_confidence_rate"] == 0 and "avg_logprob_mean" in m and m["no_speech_rate"] == 0
    (tmp_path / "a.json").write_text(json.dumps(rep))
    # without --json the table goes to stdout; -o keeps the report
    r = aromni("eval", "asr", "--model", tiny_bundle, "--data", corpus / "manifest.jsonl", "--seed", 1,
               "-o", tmp_path / "b.json", *FAST)
    assert r.returncode == 0, r.stderr.decode()
    assert b"wer" in r.stdout and b"normalizer" in r.stdout and b"(2 items)" in r.stdout
    r = aromni("eval", "--compare", tmp_path / "a.json", tmp_path / "b.json")
    assert r.returncode == 0, r.stderr.decode()
    lines = r.stdout.decode().splitlines()
    assert lines[0].split()[:2] == ["a.json", "b.json"]
    assert any(line.split()[:3] == ["seed", "0", "1"] for line in lines)
    assert any(line.split()[:1] == ["wer"] for line in lines)
    assert any(line.split()[:1] == ["batch_size"] for line in lines)  # -b 2 vs the default 8


@pytest.mark.slow
def test_cli_eval_tts_and_plot(tiny_bundle, corpus, tmp_path):
    rep = ok_json(aromni("eval", "tts", "--model", tiny_bundle, "--data", corpus / "manifest.jsonl", "--judge",
                         "self", "--json", *FAST))
    _common_report_checks(rep, "tts", tiny_bundle, 2)
    (tmp_path / "tts.json").write_text(json.dumps(rep))
    if HAVE_MPL:
        r = aromni("plot", tmp_path / "tts.json", "-o", tmp_path / "rtf.png")
        assert r.returncode == 0, r.stderr.decode()
        assert (tmp_path / "rtf.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_errors(tiny_bundle, corpus, tmp_path):
    def err(*args):
        r = aromni(*args)
        assert r.returncode == 2, (r.returncode, r.stderr.decode())
        assert b"Traceback" not in r.stderr and r.stdout == b""
        assert len(r.stderr.decode().strip().splitlines()) == 1
        return r.stderr.decode()

    assert "no such file" in err("eval", "asr", "--model", tiny_bundle, "--data", tmp_path / "missing.jsonl")
    assert "missing TASK" in err("eval")
    (tmp_path / "x.json").write_text("{}")
    assert "not an aromni evaluation report" in err("eval", "--compare", tmp_path / "x.json", tmp_path / "x.json")


@pytest.mark.skipif(not HAVE_MPL, reason="matplotlib is not installed (pip install 'aromni[plot]')")
def test_cli_plot_metrics(tmp_path):
    m = tmp_path / "metrics.jsonl"
    m.write_text("".join(json.dumps({"step": s, "loss": 5 / (1 + s), "lr": 1e-3}) + "\n" for s in range(40))
                 + json.dumps({"step": 39, "val_loss": 0.2}) + "\n")
    r = aromni("plot", m, "-o", tmp_path / "loss.png", "--smooth", "0.5")
    assert r.returncode == 0, r.stderr.decode()
    assert b"loss, val_loss" in r.stderr
    from PIL import Image
    with Image.open(tmp_path / "loss.png") as im:
        assert im.format == "PNG" and im.width >= 600
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1, "loss": 2}\nnot json\n')
    r = aromni("plot", bad, "-o", tmp_path / "x.png")
    assert r.returncode == 2 and b"line 2" in r.stderr


# --- in process (same code path after loading; one model load for all) -------------------------
def test_eval_librispeech_dir(omni, tiny_bundle, corpus):
    rep = run_eval(omni, "asr", corpus / "LibriSpeech")
    _common_report_checks(rep, "asr", tiny_bundle, 2)
    assert rep["data"]["format"] == "librispeech" and rep["metrics"]["ref_words"] == 5
    assert [it["id"] for it in rep["items"]] == ["19-198-0000", "19-198-0001"]
    assert [it["ref"] for it in rep["items"]] == ["NORTHANGER ABBEY", "THIS LITTLE WORK"]


def test_eval_tts_self_judge(omni, tiny_bundle, corpus, tmp_path):
    rep = run_eval(omni, "tts", corpus / "manifest.jsonl", judge="self", save_dir=str(tmp_path / "wavs"))
    _common_report_checks(rep, "tts", tiny_bundle, 2)
    m = rep["metrics"]
    for k in ("wer", "ref_words", "rtf_mean", "rtf_median", "first_audio_s_mean", "audio_s_total"):
        assert k in m, k
    assert m["ref_words"] == 4 and rep["settings"]["judge"] == "self"
    for it in rep["items"]:
        assert it["audio_s"] >= 0 and isinstance(it["hyp"], str) and os.path.exists(it["wav"])


@pytest.mark.skipif(whisper_unavailable() is not None, reason=f"Whisper judge unavailable: {whisper_unavailable()}")
def test_eval_tts_whisper_judge(omni, corpus):
    rep = run_eval(omni, "tts", corpus / "manifest.jsonl", limit=1)
    assert rep["settings"]["judge"] == "whisper" and rep["settings"]["judge_model"]
    assert rep["metrics"]["n"] == 1 and isinstance(rep["items"][0]["hyp"], str)


@pytest.mark.skipif(whisper_unavailable() is not None, reason=f"Whisper judge unavailable: {whisper_unavailable()}")
def test_eval_tts_two_judges_share_one_synthesis(omni, corpus):
    from aromni.core.eval.report import markdown_summary

    rep = run_eval(omni, "tts", corpus / "manifest.jsonl", limit=2, judge="whisper,self")
    m = rep["metrics"]
    assert set(m["judges"]) == {"whisper", "self"} and m["wer"] == m["judges"]["whisper"]["wer"]
    assert rep["settings"]["judge"] == "whisper,self"
    for it in rep["items"]:
        assert set(it["hyps"]) == {"whisper", "self"} and it["hyp"] == it["hyps"]["whisper"]
    own = run_eval(omni, "tts", corpus / "manifest.jsonl", limit=2, judge="self")
    assert [it["hyp"] for it in own["items"]] == [it["hyps"]["self"] for it in rep["items"]]
    assert "(whisper), " in markdown_summary([rep]) and "(self)" in markdown_summary([rep])


def test_eval_tts_empty_judge_list_is_a_user_error(omni, corpus):
    from aromni.core.errors import AromniError

    with pytest.raises(AromniError, match="names no judge"):
        run_eval(omni, "tts", corpus / "manifest.jsonl", limit=1, judge=",")


def test_eval_caption(omni, tiny_bundle, corpus):
    rep = run_eval(omni, "caption", corpus / "manifest.jsonl")
    _common_report_checks(rep, "caption", tiny_bundle, 2)
    assert all(len(it["refs"]) == 2 for it in rep["items"])  # two caption lines per image, merged
    assert rep["metrics"]["cider_d"] >= 0 and rep["metrics"]["attr_n"] == 2
    assert 0 <= rep["metrics"]["attr_accuracy"] <= 1
    assert rep["metrics"]["avg_logprob_mean"] < 0 and rep["metrics"]["low_confidence_rate"] == 0
    assert all(it["avg_logprob"] < 0 and it["low_confidence"] is False for it in rep["items"])


def test_eval_t2i_and_s2i(omni, tiny_bundle, corpus, tmp_path, capsys):
    from aromni.core.eval.runner import EvalConfig, evaluate

    rep = evaluate(EvalConfig(task="t2i", data=str(corpus / "manifest.jsonl"), device="cpu", batch_size=2,
                              save_dir=str(tmp_path / "img")), omni=omni)
    assert "CLIPScore not computed" in capsys.readouterr().err
    assert rep["task"] == "t2i" and rep["batch_size"] == 2 and rep["data"]["n"] == len(rep["items"]) == 2
    assert rep["metrics"]["attr_n"] == 2 and "clipscore" not in rep["metrics"]
    assert rep["metrics"]["scp_accuracy"] >= rep["metrics"]["attr_accuracy"]
    assert all(os.path.exists(it["image"]) for it in rep["items"])
    rep = run_eval(omni, "s2i", corpus / "manifest.jsonl", decode={"max_text_tokens": 6})  # room for the image
    assert rep["decoding"]["max_text_tokens"] == 6 and rep["data"]["n"] == len(rep["items"]) == 2
    assert rep["metrics"]["attr_n"] == 2 and "transcript_wer" in rep["metrics"]


def test_eval_input_errors(omni, corpus, tmp_path):
    from aromni.core.errors import AromniError, InputError

    with pytest.raises(AromniError, match="unknown task"):
        run_eval(omni, "dance", corpus / "manifest.jsonl")
    with pytest.raises(InputError, match="splits present"):
        run_eval(omni, "asr", corpus / "manifest.jsonl", split="test")
    with pytest.raises(InputError, match="LibriSpeech"):
        run_eval(omni, "tts", corpus / "LibriSpeech")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task": "asr", "audio": "nope.wav", "text": "x"}\n')
    with pytest.raises(InputError, match="line 1: no such file"):
        run_eval(omni, "asr", bad)
    bad.write_text('{"task": "asr", "text": "x"}\n')
    with pytest.raises(InputError, match="line 1: a asr item needs audio"):
        run_eval(omni, "asr", bad)
    with pytest.raises(InputError, match="no such checkpoint"):
        run_eval(omni, "t2i", corpus / "manifest.jsonl", clip_checkpoint=str(tmp_path / "none.bin"))
    bad.write_text('{"task": "t2i", "text": "a photo of a dog"}\n')  # no scene to analyse, no CLIP model
    with pytest.raises(AromniError, match="clip_checkpoint"):
        run_eval(omni, "t2i", bad)
    assert run_eval(omni, "asr", corpus / "manifest.jsonl", split="all", limit=3)["metrics"]["n"] == 3


def test_scene_scoring_accepts_a_perfect_answer():
    # the accuracy plumbing: a faithful caption / image of the reference scene counts as correct
    from aromni.core.corpus.scenes import analyse, caption, draw, parse_caption
    from aromni.core.eval.runner import _attr_check

    sc = {"background": "grey", "objects": [{"shape": "star", "colour": "yellow", "size": "large",
                                            "position": "right"}]}
    assert _attr_check(parse_caption(caption(sc)), sc, [caption(sc)])
    assert _attr_check(analyse(draw(sc)), sc, [caption(sc)])
    assert not _attr_check(parse_caption("a small yellow star on the right"), sc, [caption(sc)])
    # the T2I target's criterion leaves the size out; the shape still counts
    from aromni.core.eval.runner import SCP_KEYS, _attr_metrics, _scene_verdicts
    small = analyse(draw({**sc, "objects": [{**sc["objects"][0], "size": "small"}]}))
    assert _scene_verdicts(small, sc, caption(sc)) == {"attrs_ok": False, "scp_ok": True}
    assert not _attr_check(parse_caption("a large yellow circle on the right"), sc, [caption(sc)], SCP_KEYS)
    rows = [{"attrs_ok": False, "scp_ok": True}, {"attrs_ok": True, "scp_ok": True}, {"attrs_ok": None}]
    assert _attr_metrics(rows) == {"attr_accuracy": 0.5, "attr_n": 2, "scp_accuracy": 1.0}
    # the background counts once the text states it
    said = caption(sc) + " on a grey background"
    assert _attr_check(analyse(draw(sc)), sc, [said])
    assert not _attr_check(analyse(draw(dict(sc, background="white"))), sc, [said])


def test_tts_caption_attributes_heard():
    # which attributes a judge heard right in spoken captions; sentences (no attrs) are left out
    from aromni.core.eval.runner import _heard_attrs

    sc = {"objects": [{"shape": "star", "colour": "green", "size": "small", "position": "right"}]}
    rows = [{"attrs": sc, "hyps": {"whisper": "A small green star on the left.",
                                   "self": "a small green star on the right"}},
            {"attrs": sc, "hyps": {"whisper": "a small red star on the right",
                                   "self": "a large green star on the right"}},
            {"hyps": {"whisper": "hello", "self": "hello"}}]
    got = _heard_attrs(rows)["caption_attrs"]
    assert got["n"] == 2
    assert got["whisper"] == {"shape": 1.0, "colour": 0.5, "size": 1.0, "position": 0.5}
    assert got["self"] == {"shape": 1.0, "colour": 1.0, "size": 0.5, "position": 1.0}
    assert _heard_attrs(rows[2:]) == {}


@pytest.mark.slow
def test_t2i_analysis_sweep(tiny_bundle, corpus):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "t2i_analysis.py"), "sweep", "--data",
                        str(corpus / "manifest.jsonl"), "--model", tiny_bundle, "--limit", "2"],
                       capture_output=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr.decode()
    rows = [line.split() for line in r.stdout.decode().strip().splitlines()]
    assert rows[0] == ["setting", "all", "s+c+p"] and len(rows) == 8  # 7 settings
    assert all(row[-1].endswith("%") and row[-2].endswith("%") for row in rows[1:])


@pytest.mark.slow
def test_eval_default_script(tiny_bundle, corpus, tmp_path):
    # the model card's numbers come from this script on the default model; here it runs on the tiny bundle
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "eval_default.py"), "--data",
                        str(corpus / "manifest.jsonl"), "--model", tiny_bundle, "--out", str(tmp_path / "ev"),
                        "--judge", "self", "--device", "cpu", "-q"], capture_output=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr.decode()
    rows = r.stdout.decode().strip().splitlines()
    assert rows[0].startswith("| task |") and [row.split("|")[1].strip() for row in rows[2:]] == \
        ["asr", "tts", "caption", "t2i", "s2i", "t2i-1", "t2i-16"]
    assert sorted(os.listdir(tmp_path / "ev")) == ["asr.json", "caption.json", "s2i.json", "t2i-1.json",
                                                   "t2i-16.json", "t2i.json", "tts.json"]
    one = json.loads((tmp_path / "ev" / "t2i-1.json").read_text())  # the argmax drawing alone
    assert one["task"] == "t2i" and one["decoding"]["candidates"] == 1
    # the tiny bundle's own default is one candidate: t2i-1 is that report, not a second run
    assert one == json.loads((tmp_path / "ev" / "t2i.json").read_text())
    best = json.loads((tmp_path / "ev" / "t2i-16.json").read_text())
    assert best["decoding"]["candidates"] == 16 and best["data"] == one["data"]

    # --resume keeps the reports of this model, data and settings and runs only what is missing or stale
    def resume(*extra):
        r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "eval_default.py"), "--data",
                            str(corpus / "manifest.jsonl"), "--model", tiny_bundle, "--out", str(tmp_path / "ev"),
                            "--tasks", "asr,tts", "--device", "cpu", "-q", "--resume", *extra],
                           capture_output=True, env=env, timeout=600)
        assert r.returncode == 0, r.stderr.decode()
        return r.stderr.decode(), [row.split("|")[1].strip() for row in r.stdout.decode().strip().splitlines()[2:]]

    mtimes = {t: os.path.getmtime(tmp_path / "ev" / f"{t}.json") for t in ("asr", "tts")}
    err, tasks = resume("--judge", "self")
    assert "asr: kept" in err and "tts: kept" in err and tasks == ["asr", "tts"]
    assert all(os.path.getmtime(tmp_path / "ev" / f"{t}.json") == m for t, m in mtimes.items())
    err, _ = resume("--judge", "self", "--seed", "1")  # another seed: both run again
    assert "kept" not in err and all(os.path.getmtime(tmp_path / "ev" / f"{t}.json") > m for t, m in mtimes.items())


def _tts_sentence_manifest(root) -> str:
    """Training TTS lines: two whole sentences (one twice, one without audio), a caption, a piece, a short line."""
    (root / "wav").mkdir(exist_ok=True)
    for i in range(3):
        _wav(root / "wav" / f"s{i}.wav", 0.5, i)
    lines = [{"task": "tts", "split": "train", "text": "the cat is small", "audio": "wav/s0.wav"},
             {"task": "tts", "split": "train", "text": "the cat is small", "audio": "wav/s1.wav"},
             {"task": "tts", "split": "train", "text": "we like the park", "audio": None},
             {"task": "tts", "split": "train", "text": "a small red circle", "audio": "wav/s2.wav",
              "attrs": {"background": "white", "objects": []}},
             {"task": "tts", "split": "train", "text": "the dog is", "audio": "wav/s2.wav", "chunk": [0, 3]},
             {"task": "tts", "split": "train", "text": "hello there", "audio": "wav/s2.wav"},
             {"task": "tts", "split": "heldout", "text": "the bird is happy", "audio": "wav/s2.wav"},
             {"task": "asr", "split": "train", "text": "the fish is blue", "audio": "wav/s2.wav"}]
    path = root / "train.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in lines))
    return str(path)


def test_tts_sentences_picks_whole_training_sentences(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    try:
        from tts_sentences import pick_sentences
    finally:
        sys.path.pop(0)
    path = _tts_sentence_manifest(tmp_path)
    got = pick_sentences(path, "train", 10)
    assert sorted(d["text"] for d in got) == ["the cat is small", "we like the park"]
    assert next(d for d in got if d["audio"])["audio"] == str(tmp_path / "wav" / "s0.wav")  # the first line kept
    assert [d["text"] for d in pick_sentences(path, "train", 1, seed=3)] == \
        [d["text"] for d in pick_sentences(path, "train", 1, seed=3)]
    assert pick_sentences(path, "train", 10, min_words=5) == []
    assert [d["text"] for d in pick_sentences(path, "heldout", 10)] == ["the bird is happy"]


@pytest.mark.slow
def test_tts_sentences_script(tiny_bundle, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = tmp_path / "ts" / "tts-sentences.json"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "tts_sentences.py"), "--data",
                        _tts_sentence_manifest(tmp_path), "--model", tiny_bundle, "--judge", "self", "--device", "cpu",
                        "--out", str(out)], capture_output=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr.decode()
    rows = r.stdout.decode().strip().splitlines()
    assert rows[0].startswith("| judge | model TTS WER (2 sentences) | teacher WER (1) |")
    assert rows[2].startswith("| self |")
    res = json.loads(out.read_text())
    assert res["n"] == 2 and res["teacher_n"] == 1 and set(res["model"]) == set(res["teacher"]) == {"self"}
    assert all(0 <= res[k]["self"] for k in ("model", "teacher"))
    report = json.loads((tmp_path / "ts" / "tts-sentences.eval.json").read_text())
    assert report["task"] == "tts" and report["data"]["n"] == 2
    assert len((tmp_path / "ts" / "tts-sentences.jsonl").read_text().splitlines()) == 2
    # nothing to pick: one line on stderr, exit 2
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "tts_sentences.py"), "--data",
                        str(tmp_path / "train.jsonl"), "--split", "none", "--model", tiny_bundle],
                       capture_output=True, env=env, timeout=600)
    assert r.returncode == 2 and r.stderr.decode().startswith("error: no whole-sentence TTS lines")
