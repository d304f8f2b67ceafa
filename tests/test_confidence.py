"""Confidence: per-token log-probabilities recorded by the decoder, and their summary for a text answer."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from aromni.core.api import DEFAULT_DIR
from aromni.core.confidence import (RULE_MEASURES, Answer, answer_logprobs, rules, rules_entry, summarize,
                                    why_low)
from aromni.core.decoding import build_masks, options_for
from aromni.core.generate import generate
from aromni.core.model import build_model, get_config
from aromni.core.vocab import compact_layout

V = compact_layout(text=100, image=64, audio=64, image_tokens=8)


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return build_model(get_config("tiny", vocab_size=V.vocab_size, max_seq_len=160), seed=0).eval()


def P(*text, tail=()):
    return [V.bos] + [V.text_start + t for t in text] + list(tail)


@torch.no_grad()
def test_greedy_logprobs_equal_the_models_own_distribution(model):
    """Greedy text under the asr mask: each recorded log-prob is log_softmax of the masked logits at the token."""
    opts = options_for("asr", max_new_tokens=6)
    prompt = P(1, 2, 3, tail=[V.eoh])
    g = generate(model, V, [prompt], opts)
    toks, lps = g.tokens[0], g.logprobs[0]
    assert len(toks) == len(lps) >= 1
    allowed = build_masks(V, opts)[0]
    seq = list(prompt)
    for t, lp in zip(toks, lps):
        logits = model(torch.tensor([seq]))[0, -1].float().masked_fill(~allowed, float("-inf"))
        want = torch.log_softmax(logits, -1)
        assert int(logits.argmax()) == t
        assert lp == pytest.approx(float(want[t]), abs=1e-4)
        assert lp <= 0.0
        seq.append(t)


def test_forced_tokens_have_no_logprob(model):
    """An image span: 8 codes chosen by the model, then <eoi> forced (None)."""
    opts = options_for("t2i", max_new_tokens=20, cfg=False)
    g = generate(model, V, [P(4, 5, tail=[V.boi])], opts, seeds=[0])
    toks, lps = g.tokens[0], g.logprobs[0]
    assert toks[-1] == V.eoi and lps[-1] is None
    assert all(isinstance(x, float) and x <= 0.0 and math.isfinite(x) for x in lps[:-1])


def test_sampled_logprobs_are_per_row_and_batch_independent(model):
    opts = options_for("chat", max_new_tokens=5, temperature=1.5, images=False, speech=False)
    a = generate(model, V, [P(7, 8)], opts, seeds=[3])
    b = generate(model, V, [P(1, 2, 3, 4), P(7, 8)], opts, seeds=[9, 3])
    assert a.tokens[0] == b.tokens[1]
    assert a.logprobs[0] == pytest.approx(b.logprobs[1], abs=1e-4)


# --- summaries and rules ------------------------------------------------------------------------
def test_answer_logprobs_stop_at_the_first_stop_and_skip_forced():
    toks = [V.text_start + 1, V.text_start + 2, V.eos, V.text_start + 3]
    assert answer_logprobs(toks, [-0.1, None, -0.3, -9.0], V) == [-0.1, -0.3]
    c = summarize([-0.1, -0.5, -0.3])
    assert c.avg_logprob == pytest.approx(-0.3) and c.first_logprob == -0.1 and c.min_logprob == -0.5
    assert c.tokens == 3 and c.to_dict() == {"avg_logprob": -0.3, "first_logprob": -0.1, "min_logprob": -0.5}
    empty = summarize([])
    assert empty.to_dict() == {"avg_logprob": None, "first_logprob": None, "min_logprob": None}
    assert why_low(empty, (("avg_logprob", "<", 0.0),)) == ""


def test_rules_are_the_models_own(tmp_path):
    """A model's rules come from its aromni.json: the bundled model has calibrated ones, a model without the entry
    none, and a rewritten file is read again."""
    asr = rules("asr", DEFAULT_DIR)
    assert tuple((m, op) for m, op, _ in asr) == RULE_MEASURES["asr"] and rules("caption", DEFAULT_DIR)
    assert rules("asr", str(tmp_path)) == () and rules("asr", "") == ()
    meta = tmp_path / "aromni.json"
    meta.write_text(json.dumps({"format": "aromni-bundle"}))
    assert rules("asr", str(tmp_path)) == ()
    cap = (("avg_logprob", "<", -0.123456), ("image_error", ">", 6.54321))
    meta.write_text(json.dumps({"confidence": rules_entry({"caption": cap})}))
    os.utime(meta, (1, 1))  # a different mtime from the first write, however fast the two follow each other
    assert rules("caption", str(tmp_path)) == (("avg_logprob", "<", -0.1235), ("image_error", ">", 6.5432))
    assert rules("asr", str(tmp_path)) == ()
    with pytest.raises(ValueError, match="measures"):
        rules_entry({"asr": (("avg_logprob", "<", -1.0),)})
    (m1, op1, t1), (m2, op2, t2) = asr
    assert (m1, op1, m2, op2) == ("first_logprob", "<", "codec_error", ">") and t1 < 0 < t2
    ok = summarize([t1 / 2], codec_error=t2 / 2)
    assert why_low(ok, asr) == "" and why_low(summarize([2 * t1], codec_error=t2 / 2), asr).startswith("first token")
    assert why_low(summarize([t1 / 2], codec_error=2 * t2), asr).startswith("codec error")
    # no chosen token: the log-probability rules stay silent, the codec rule still speaks
    assert why_low(summarize([], codec_error=t2 / 2), asr) == ""
    assert why_low(summarize([], codec_error=2 * t2), asr).startswith("codec error")
    assert why_low(summarize([2 * t1]), ()) == ""
    assert summarize([-0.1], codec_error=0.01234).to_dict()["codec_error"] == 0.0123


def test_caption_rules_use_the_image_error():
    cap = rules("caption", DEFAULT_DIR)
    (m1, op1, t1), (m2, op2, t2) = cap
    assert (m1, op1, m2, op2) == ("avg_logprob", "<", "image_error", ">") and t1 < 0 < t2
    assert why_low(summarize([t1 / 2], image_error=t2 / 2), cap) == ""
    assert why_low(summarize([t1 / 2], image_error=2 * t2), cap).startswith("image tokenizer error")
    # an input measure holds without a chosen token; a picture that was not measured holds no image rule
    assert why_low(summarize([], image_error=2 * t2), cap).startswith("image tokenizer error")
    assert why_low(summarize([t1 / 2]), cap) == ""
    d = summarize([-0.1], image_error=3.45678).to_dict()
    assert d["image_error"] == 3.4568 and "codec_error" not in d
    assert Answer.from_dict({"text": "x", **d}).confidence.image_error == 3.4568


def test_image_round_trip_error_sees_pictures_unlike_the_training_images(pictures):
    """The bundled image tokenizer reconstructs a corpus scene closely and noise or a photograph badly; its codes
    are those of encode()."""
    import matplotlib
    from PIL import Image

    from aromni.core.api import load

    tok = load(DEFAULT_DIR).image
    photo = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", "grace_hopper.jpg")
    ims = [Image.open(pictures / "scene.png").convert("RGB"), Image.open(pictures / "noise.png").convert("RGB"),
           Image.open(photo).convert("RGB")]
    codes, errors = tok.round_trip_error(ims)
    assert codes.tolist() == tok.encode(ims).tolist()
    scene, noise, face = errors
    limit = dict((m, t) for m, _, t in rules("caption", DEFAULT_DIR))["image_error"]
    assert 0 < scene < limit < min(noise, face), errors


# --- the bundled model through the CLI ----------------------------------------------------------
def cli(*args, input=None):
    env = {k: v for k, v in os.environ.items() if k != "AROMNI_MODEL"} | {"OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "aromni", *args, "-q"], input=input, capture_output=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    return r


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """A held-out scene of the corpus (in domain) and noise (out of domain)."""
    import numpy as np
    from PIL import Image

    from aromni.core.corpus import scenes

    d = tmp_path_factory.mktemp("pics")
    combos = scenes.heldout_combos(0)  # the bundled model's corpus seed: scenes it never saw
    scenes.draw(scenes.sample_scene(np.random.default_rng(0), 0.0, combos), 64).save(d / "scene.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(d / "noise.png")
    return d


@pytest.mark.slow
def test_caption_reports_confidence_and_warns_out_of_domain(pictures):
    scene, noise = str(pictures / "scene.png"), str(pictures / "noise.png")
    lines = [json.loads(x) for x in cli("caption", "--json", scene, noise).stdout.decode().splitlines()]
    assert [x["input"] for x in lines] == [scene, noise]
    assert lines[0]["low_confidence"] is False and lines[1]["low_confidence"] is True
    assert lines[0]["avg_logprob"] > lines[1]["avg_logprob"] and lines[0]["image_error"] < lines[1]["image_error"]
    assert all(x["min_logprob"] <= x["avg_logprob"] <= 0 for x in lines)
    plain = cli("caption", scene, noise)
    assert plain.stdout.decode().splitlines() == [" ".join(x["text"].split()) for x in lines]
    warn = [w for w in plain.stderr.decode().splitlines() if "low confidence" in w]
    assert len(warn) == 1 and noise in warn[0] and scene not in warn[0]


@pytest.mark.slow
def test_asr_json_carries_confidence(tmp_path):
    from aromni.core.corpus import speech

    if speech.espeak_path() is None:
        pytest.skip("espeak-ng is not installed")
    from aromni.core.audio_io import write_wav

    wav = speech.synthesize("the cat is sleeping", speech.Voice("en-us+m3", 165), 16000)
    write_wav(str(tmp_path / "a.wav"), wav, 16000)
    line = json.loads(cli("asr", "--json", str(tmp_path / "a.wav")).stdout)
    assert line["text"] == "the cat is sleeping" and line["low_confidence"] is False
    assert -1.0 < line["avg_logprob"] <= 0 and line["first_logprob"] <= 0 and 0 < line["codec_error"] < 0.0169


@pytest.mark.slow
def test_asr_warns_on_real_human_speech():
    from aromni.core.eval import real_speech

    if real_speech.available():
        pytest.skip(real_speech.available())
    clip = next(c for c in real_speech.clips(("librivox",)))
    r = cli("asr", clip.audio)
    warn = [w for w in r.stderr.decode().splitlines() if "low confidence" in w]
    assert len(warn) == 1 and clip.audio in warn[0] and "may be outside what the model knows" in warn[0]
    assert any(label in warn[0] for label in ("codec error", "log-probability"))  # names the rule that holds
    assert r.stdout.decode().strip()  # the transcript is still printed


@pytest.mark.slow
def test_asr_hears_no_speech_in_silence_beeps_and_hum(tmp_path):
    """Silence and a beep from the Asterisk package and a synthetic mains hum come back as empty lines with a
    "no speech" note on stderr (the model is never asked), next to speech that is still transcribed."""
    import numpy as np

    from aromni.core.audio_io import write_wav
    from aromni.core.corpus import speech
    from aromni.core.eval import real_speech

    if speech.espeak_path() is None or real_speech.available():
        pytest.skip("espeak-ng or the Asterisk sounds are not installed")
    write_wav(str(tmp_path / "a.wav"), speech.synthesize("the cat is sleeping", speech.Voice("en-us+m3", 165),
                                                         16000), 16000)
    t = np.arange(32000) / 16000
    write_wav(str(tmp_path / "hum.wav"), (0.2 * np.sin(2 * np.pi * 50 * t)).astype(np.float32), 16000)
    silence, beep = (os.path.join(real_speech.ASTERISK_SOUNDS, f) for f in ("silence/2.wav", "beep.wav"))
    inputs = [silence, str(tmp_path / "a.wav"), beep, str(tmp_path / "hum.wav")]
    plain = cli("asr", *inputs)
    assert plain.stdout.decode().splitlines() == ["", "the cat is sleeping", "", ""]
    notes = [w for w in plain.stderr.decode().splitlines() if "no speech" in w]
    assert [n.split(": ")[2] for n in notes] == [silence, beep, str(tmp_path / "hum.wav")], notes
    lines = [json.loads(x) for x in cli("asr", "--json", *inputs).stdout.decode().splitlines()]
    assert [x["no_speech"] for x in lines] == [True, False, True, True]
    assert "silence" in lines[0]["why_no_speech"] and "steady" in lines[2]["why_no_speech"]
    assert lines[0]["avg_logprob"] is None and lines[0]["low_confidence"] is False and "why_no_speech" not in lines[1]


def test_codec_error_comes_with_the_same_codes():
    import numpy as np

    from aromni.core.api import load
    from aromni.core.codec_fit import codec_error, encode_with_error
    from aromni.core.errors import InputError

    omni = load(None)
    t = np.arange(16000) / 16000
    wav = (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    codes, err = encode_with_error(omni.speech, wav)
    assert codes == omni.speech.encode(wav).tolist()
    assert err == codec_error(omni.speech, wav) and 0 < err < 1
    with pytest.raises(InputError):
        encode_with_error(omni.speech, np.full(800, np.nan, dtype=np.float32))
