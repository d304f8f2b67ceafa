"""Text normaliser, WER, CIDEr-D, reports and the CLIPScore wrapper."""
import importlib.util
import json
import math

import pytest

from aromni.core.errors import AromniError, InputError
from aromni.core.eval.cider import cider_d, tokenize
from aromni.core.eval.normalize import normalize_text, number_words
from aromni.core.eval.report import Report, compare, format_compare, format_table, read_report, write_report
from aromni.core.eval.wer import WERStats, corpus_wer, word_errors


# --- normaliser --------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, norm", [
    ("Hello, World!", "hello world"),
    ("HE HAD 25 DOGS", "he had twenty five dogs"),
    ("It\u2019s 3.5% off -- really?", "it's three point five percent off really"),
    ("'quoted' words", "quoted words"),
    ("rock-and-roll / jazz", "rock and roll jazz"),
    ("[noise] yes <unk> no", "yes no"),
    ("1,000 and 1999", "one thousand and one thousand nine hundred ninety nine"),
    ("agent 007", "agent zero zero seven"),
    ("  many \t spaces\n", "many spaces"),
    ("café NAÏVE", "café naïve"),
    ("My favourite colour is GREY", "my favorite color is gray"),
    ("the centres were coloured; she organised it", "the centers were colored she organized it"),
    ("a colourful greyish theatre", "a colorful grayish theater"),
])
def test_normalize(raw, norm):
    assert normalize_text(raw) == norm


def test_number_words():
    assert number_words(0) == "zero"
    assert number_words(115) == "one hundred fifteen"
    assert number_words(2_000_040) == "two million forty"
    assert number_words(10**15) == "one " + " ".join(["zero"] * 15)  # past trillions: digit by digit


# --- WER (counts worked out by hand) -----------------------------------------------------------
def test_wer_hand_computed():
    # fox->box is one substitution, "over" one insertion; 5 reference words -> 2/5
    s = word_errors("the quick brown fox jumps", "the quick brown box jumps over")
    assert (s.ref_words, s.substitutions, s.deletions, s.insertions) == (5, 1, 0, 1)
    assert s.wer == pytest.approx(0.4)
    s = word_errors("a b c d", "a c d")
    assert (s.substitutions, s.deletions, s.insertions) == (0, 1, 0) and s.wer == 0.25
    s = word_errors("one two three", "")
    assert s.deletions == 3 and s.wer == 1.0


def test_wer_normalises_unless_told_not_to():
    assert word_errors("Hello, World!", "hello world").wer == 0.0
    assert word_errors("Hello, World!", "hello world", normalize=False).wer == 1.0
    # "it's" vs "its" stays a substitution: 1 of 4 words
    assert word_errors("It's 25%", "its twenty five percent").wer == 0.25


def test_corpus_wer_sums_counts():
    s = corpus_wer(["the cat sat", "hello world"], ["the cat sat", "hello"])
    assert s.wer == pytest.approx(1 / 5)  # not the mean of per-utterance rates (0.25)
    assert s.to_dict()["errors"] == 1
    with pytest.raises(AromniError):
        corpus_wer(["a"], [])


def test_wer_empty_reference():
    s = word_errors("[noise]", "uh huh")
    assert (s.ref_words, s.insertions, s.wer) == (0, 2, None)
    assert (WERStats(3, 1, 0, 0) + s).wer == pytest.approx(3 / 3)


# --- CIDEr-D -----------------------------------------------------------------------------------
# Reference values: pycocoevalcap 1.2, ``Cider().compute_score(gts, res)`` with gts/res the
# `tokenize`d strings joined by spaces (pycocoevalcap installed outside the project, once).
REFS = [
    ["A red circle above a blue square.", "a red circle on top of a blue square",
     "There is a red circle over a blue square."],
    ["A small green triangle on the left.", "a green triangle at the left side"],
    ["Two yellow stars on a black background.", "two yellow stars", "Yellow stars, two of them, on black."],
    ["A large blue square in the middle.", "a big blue square in the centre"],
    ["A purple circle next to an orange triangle.", "an orange triangle beside a purple circle"],
]
HYPS = ["a red circle above a blue square", "a green triangle on the right", "two yellow stars on a black background",
        "a red square", "a purple circle next to a triangle"]
COCO_SCORE = 3.77856815190581
COCO_PER_IMAGE = [5.599306845921548, 3.548217116214695, 5.317274098977166, 0.2829158456366057, 4.145126852779036]


def test_cider_matches_pycocoevalcap():
    score, per = cider_d(REFS, HYPS)
    assert score == pytest.approx(COCO_SCORE, rel=1e-12)
    assert per == pytest.approx(COCO_PER_IMAGE, rel=1e-12)
    pre = [[" ".join(tokenize(r)) for r in rs] for rs in REFS]
    assert cider_d(pre, [" ".join(tokenize(h)) for h in HYPS], tokenize_text=False)[0] == pytest.approx(COCO_SCORE)


def test_cider_edge_cases_match_pycocoevalcap():
    # empty hypothesis, a repeated word (clipped counts), an exact match; same provenance as above
    refs = [["a cat sits on the mat", "the cat is on the mat"], ["a dog runs in the park"],
            ["the sky is blue today", "a blue sky"]]
    score, per = cider_d(refs, ["", "dog dog dog dog dog dog", "a blue sky"])
    assert score == pytest.approx(1.6342000839660054, rel=1e-12)
    assert per == pytest.approx([0.0, 0.20833333333333331, 4.694266918564683], rel=1e-12)


def test_cider_single_image_is_zero_and_errors():
    assert cider_d([["a red circle"]], ["a red circle"]) == (0.0, [0.0])  # idf from one document is 0
    with pytest.raises(AromniError):
        cider_d([["a"]], ["a", "b"])
    with pytest.raises(AromniError):
        cider_d([[]], ["a"])


def test_tokenize():
    assert tokenize("There's a RED circle, on the left.") == ["there's", "a", "red", "circle", "on", "the", "left"]


# --- reports -----------------------------------------------------------------------------------
def _report(**kw):
    base = dict(task="asr", metrics={"wer": 0.5, "n": 2}, model={"path": "m"}, data={"path": "d.jsonl", "n": 2},
                seed=0, decoding={"max_new_tokens": 64}, timings={"eval_s": 1.0},
                items=[{"id": "a", "wer": 0.5}])
    base.update(kw)
    return Report(**base).to_dict()


def test_report_roundtrip_and_table(tmp_path):
    r = _report()
    p = tmp_path / "r.json"
    write_report(r, str(p))
    back = read_report(str(p))
    assert back["schema"] == "aromni-eval/1" and back["metrics"] == {"wer": 0.5, "n": 2}
    for key in ("aromni_version", "model", "data", "seed", "decoding", "device", "dtype", "created"):
        assert key in back
    table = format_table(back)
    assert "wer" in table and "0.5000" in table and "d.jsonl (2 items)" in table
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(InputError, match="not an aromni evaluation report"):
        read_report(str(tmp_path / "bad.json"))
    with pytest.raises(InputError, match="no such file"):
        read_report(str(tmp_path / "missing.json"))


def test_compare_lists_metric_deltas_and_changed_settings():
    a = _report()
    b = _report(metrics={"wer": 0.25, "n": 2}, seed=1, decoding={"max_new_tokens": 128})
    rows = {k: (va, vb, d) for k, va, vb, d in compare(a, b)}
    assert rows["wer"] == (0.5, 0.25, -0.25)
    assert rows["n"][2] == 0
    assert rows["seed"] == (0, 1, None)
    assert rows["decoding.max_new_tokens"] == (64, 128, None)
    assert "model.path" not in rows  # unchanged settings are not listed
    text = format_compare(compare(a, b), "a.json", "b.json")
    assert "-0.2500" in text and "a.json" in text.splitlines()[0]


# --- CLIPScore ---------------------------------------------------------------------------------
def test_clipscore_needs_a_local_checkpoint(tmp_path):
    from aromni.core.eval.clipscore import ClipScorer

    with pytest.raises(AromniError, match="clip_checkpoint"):
        ClipScorer(None)
    with pytest.raises(InputError, match="no such checkpoint"):
        ClipScorer(str(tmp_path / "nope.bin"))
    (tmp_path / "open_clip_config.json").write_text("{}")
    with pytest.raises(InputError, match="no weights"):
        ClipScorer(str(tmp_path))


def _open_clip_importable() -> str | None:
    if importlib.util.find_spec("open_clip") is None:
        return "open_clip is not installed (pip install 'aromni[clip]')"
    try:
        import open_clip  # noqa: F401
    except Exception as e:  # a torchvision built for another torch fails at import
        return f"open_clip does not import here ({type(e).__name__}: {str(e).splitlines()[0]})"
    return None


@pytest.mark.skipif(_open_clip_importable() is not None, reason=str(_open_clip_importable()))
def test_clipscore_on_a_tiny_open_clip_model(tmp_path):
    import open_clip
    import torch
    from PIL import Image

    from aromni.core.eval.clipscore import ClipScorer

    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16,
                                           "head_width": 16},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    torch.manual_seed(0)
    model = open_clip.CLIP(**cfg).eval()
    torch.save(model.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    scorer = ClipScorer(str(tmp_path))
    images = [Image.new("RGB", (40, 40), c) for c in ("red", "blue")]
    texts = ["a red square", "a blue square"]
    got = scorer.score(images, texts)
    tok = open_clip.get_tokenizer(f"local-dir:{tmp_path}")
    with torch.no_grad():
        pixels = torch.stack([scorer.preprocess(i) for i in images])
        e_i = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1)
        e_t = torch.nn.functional.normalize(model.encode_text(tok(["A photo depicts " + t for t in texts])), dim=-1)
    want = (2.5 * (e_i * e_t).sum(-1).clamp(min=0)).tolist()
    assert got == pytest.approx(want, abs=1e-5)
    assert all(0 <= s <= 2.5 for s in got) and not any(math.isnan(s) for s in got)


def test_markdown_summary():
    from aromni.core.eval.report import markdown_summary

    tts = _report(task="tts", metrics={"wer": 0.125, "n": 4, "first_audio_s_median": 0.146, "rtf_median": 0.88},
                  settings={"judge": "whisper"})
    asr = _report()
    md = markdown_summary([asr, tts]).splitlines()
    assert md[0].startswith("| task |") and len(md) == 4
    assert md[2] == "| asr | 2 | WER 50.0% | cpu float32 |"
    assert md[3] == "| tts | 4 | WER 12.5%, first audio 146 ms, RTF 0.88 | whisper judge, cpu float32 |"


def test_markdown_summary_and_table_show_groups():
    from aromni.core.eval.report import markdown_summary

    m = {"wer": 0.1, "n": 30, "by_group": {"held-out voice": {"wer": 0.25, "n": 10},
                                            "train voices": {"wer": 0.025, "n": 20}}}
    asr = _report(metrics=m)
    md = markdown_summary([asr]).splitlines()
    assert md[2] == "| asr | 30 | WER 10.0%, held-out voice: 25.0% (10); train voices: 2.5% (20) | cpu float32 |"
    table = format_table(asr)
    assert "by_group.held-out voice.wer" in table and "0.2500" in table


def test_by_group_splits_rows_only_with_two_groups():
    from aromni.core.eval.runner import _asr_score, _by_group

    rows = [{"ref": "a b", "hyp": "a b", "group": "train voices"},
            {"ref": "a b", "hyp": "a c", "group": "held-out voice"}]
    g = _by_group(rows, _asr_score)["by_group"]
    assert g["train voices"]["wer"] == 0 and g["held-out voice"]["wer"] == 0.5 and g["held-out voice"]["n"] == 1
    assert _by_group(rows[:1], _asr_score) == {}
    assert _by_group([{"ref": "a", "hyp": "a", "group": None}], _asr_score) == {}


def test_manifest_voice_heldout_becomes_the_item_group(tmp_path):
    from aromni.core.eval.data import load_dataset

    (tmp_path / "a.wav").write_bytes(b"")
    lines = [{"task": "asr", "split": "heldout", "text": "hi", "audio": "a.wav", "voice_heldout": v}
             for v in (False, True)] + [{"task": "asr", "split": "heldout", "text": "hi", "audio": "a.wav"}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    ds = load_dataset(str(tmp_path / "m.jsonl"), "asr")
    assert [it.group for it in ds.items] == ["train voices", "held-out voice", None]
