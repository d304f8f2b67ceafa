"""Corpus build: determinism, manifest schema, held-out disjointness, speech (skipped without espeak-ng), CLI."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from aromni.core.audio_io import load_audio
from aromni.core.corpus import scenes as S
from aromni.core.corpus import sentences as T
from aromni.core.corpus import speech as P
from aromni.core.corpus.build import LINE_KEYS, build_corpus, read_manifest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = {"tts", "asr", "caption", "t2i", "s2i", "text", "chat"}
needs_espeak = pytest.mark.skipif(P.espeak_path() is None,
                                  reason="espeak-ng not installed (apt-get install espeak-ng); speech not tested")
SR = 16000


def manifests(d):
    return [open(os.path.join(d, n), "rb").read() for n in ("train.jsonl", "heldout.jsonl")]


@pytest.fixture(scope="module")
def textonly(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("corpus_text"))
    return d, build_corpus(d, seed=3, preset="ci", speech=False)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    if P.espeak_path() is None:
        pytest.skip("espeak-ng not installed (apt-get install espeak-ng); speech not tested")
    d = str(tmp_path_factory.mktemp("corpus_full"))
    return d, build_corpus(d, seed=0, preset="ci", sample_rate=SR)


def all_texts(lines):
    for line in lines:
        if line["text"]:
            yield line["text"]
        for t in line.get("turns") or []:
            for k in ("text", "transcript"):
                if t.get(k):
                    yield t[k]


def all_attrs(lines):
    for line in lines:
        if line["attrs"]:
            yield line["attrs"]
        for t in line.get("turns") or []:
            if t.get("attrs"):
                yield t["attrs"]


# --- sentences ----------------------------------------------------------------------------------
def test_sentences_split():
    train, held = T.split_sentences(0)
    assert (train, held) == T.split_sentences(0)
    assert len(train) + len(held) >= 250 and len(held) >= 20
    assert {"hello", "hello world"} <= set(train)
    assert not set(train) & set(held)
    words = {w for s in train for w in s.split()}
    assert all(w in words for s in held for w in s.split())
    assert all(s == T.normalise(s) for s in train + held)
    assert T.written("how are you") == "How are you?" and T.written("i like tea") == "I like tea."
    assert T.normalise(T.written("hello world")) == "hello world"


def test_wider_sentences_are_new_sentences_of_the_corpus_words():
    wider = T.wider()
    assert wider == T.wider() and len(wider) == len(set(wider)) > 400
    assert not set(wider) & set(T.all_sentences())
    words = {w for s in T.all_sentences() for w in s.split()}
    assert all(w in words for s in wider for w in s.split())
    assert all(s == T.normalise(s) for s in wider)
    assert {"i have eleven apples", "my mother is hungry", "three plus nine is twelve"} <= set(wider)


# --- text-only build (no espeak-ng needed) -------------------------------------------------------
def test_build_is_deterministic_and_schema(textonly, tmp_path):
    d, summary = textonly
    again = build_corpus(str(tmp_path), seed=3, preset="ci", speech=False)
    assert manifests(d) == manifests(str(tmp_path))
    assert summary["lines"] == again["lines"]
    other = build_corpus(str(tmp_path / "other"), seed=4, preset="ci", speech=False)
    assert manifests(str(tmp_path / "other")) != manifests(d)
    assert other["heldout_combos"] != summary["heldout_combos"]
    for name, split in (("train.jsonl", "train"), ("heldout.jsonl", "heldout")):
        lines = read_manifest(os.path.join(d, name))
        assert {line["task"] for line in lines} == {"caption", "t2i", "text", "chat"}
        for line in lines:
            assert list(line)[:len(LINE_KEYS)] == list(LINE_KEYS)
            assert line["split"] == split and line["task"] in TASKS
            if line["image"]:
                assert os.path.isfile(os.path.join(d, line["image"]))
            if line["task"] == "chat":
                roles = [t["role"] for t in line["turns"]]
                assert roles == ["user", "assistant"] * (len(roles) // 2) and roles
                assert not any("audio" in t for t in line["turns"])
            if line["task"] == "caption":
                assert line["text"] == S.caption(line["attrs"])
            if line["task"] in ("caption", "t2i"):
                assert S.attrs_match(S.parse_caption(line["text"]), line["attrs"])


def test_images_are_drawn_from_their_attrs(textonly):
    d, _ = textonly
    for line in read_manifest(os.path.join(d, "train.jsonl"))[:12]:
        if line["image"]:
            img = Image.open(os.path.join(d, line["image"]))
            assert img.size == (64, 64)
            assert np.array_equal(np.asarray(img.convert("RGB")), np.asarray(S.draw(line["attrs"])))


def test_heldout_is_disjoint(textonly):
    d, summary = textonly
    train = read_manifest(os.path.join(d, "train.jsonl"))
    held = read_manifest(os.path.join(d, "heldout.jsonl"))
    hc = {tuple(c) for c in summary["heldout_combos"]}
    assert hc == S.heldout_combos(3)
    assert not any(S.combo(o) in hc for a in all_attrs(train) for o in a["objects"])
    for a in all_attrs(held):
        assert any(S.combo(o) in hc for o in a["objects"])
    _, held_sents = T.split_sentences(3)
    train_texts = set(all_texts(train))
    assert not train_texts & set(held_sents)
    assert any(line["task"] == "text" and line["text"] in held_sents for line in held)


def test_tts_drills_hold_nothing_held_out():
    from aromni.core.corpus.build import DRILL_WORDS, caption_words, drill_texts

    held = S.heldout_combos(0)
    train_s, held_s = T.split_sentences(0)
    texts = drill_texts(np.random.default_rng(5), 600, train_s, held, held_s)
    assert texts == drill_texts(np.random.default_rng(5), 600, train_s, held, held_s)
    vocab = set(caption_words()) | {w for s in train_s for w in s.split()}
    where = {p: S.WHERE[p].split()[-1] for p in S.POSITIONS}
    for t in texts:
        words = t.split()
        assert DRILL_WORDS[0] <= len(words) <= DRILL_WORDS[1] and set(words) <= vocab
        assert not any({s, c, where[p]} <= set(words) for s, c, p in held)
        assert not any(h in t for h in held_s)
    # the position words are read in many contexts, after shapes and colours that training captions never
    # put at that position too
    said = [set(t.split()) for t in texts]
    for s, c, p in held:
        assert any({c, where[p]} <= w for w in said) and any({s, where[p]} <= w for w in said)


@pytest.mark.parametrize("field,flag,task,n", [("n_tts_drills", "drill", "tts", 5), ("n_tts_chunks", "chunk", "tts", 7),
                                               ("n_asr_joined", "joined", "asr", 4)])
def test_extra_lines_come_last_and_change_nothing_else(field, flag, task, n):
    """Drill, chunk and joined-piece lines are appended to the training manifest: every other line (and so the
    codec's first-mention clips) is the same as without them."""
    from dataclasses import replace

    from aromni.core.corpus.build import PRESETS, plan

    cfg = replace(PRESETS["ci"], **{"n_tts_drills": 0, "n_tts_chunks": 0, "n_asr_joined": 0, field: n})
    (tr, he), _ = plan("unused", cfg, 0, SR, True)
    (tr0, he0), _ = plan("unused", replace(cfg, **{field: 0}), 0, SR, True)
    assert tr.lines[:len(tr0.lines)] == tr0.lines and he.lines == he0.lines
    extra = tr.lines[len(tr0.lines):]
    assert len(extra) == n
    assert all(d[flag] and d["task"] == task and d["voice"] == P.OUTPUT_VOICE.name for d in extra)


@needs_espeak
def test_asr_joined_lines_hear_training_texts_said_piece_by_piece(tmp_path):
    """A joined line's clip is its text's pieces of ``joined_words`` words (as ``--chunk-words`` splits them),
    each the output voice's own clip, back to back; its transcript is the whole training text."""
    from aromni.core.segmenting import split_words

    d = str(tmp_path)
    build_corpus(d, seed=0, preset="ci", sample_rate=SR, n_asr_joined=6, joined_words=2, joined_mixed=0.0)
    lines = read_manifest(os.path.join(d, "train.jsonl"))
    joined = [x for x in lines if x.get("joined")]
    assert len(joined) == 6 and joined == lines[-6:]
    sents = set(T.split_sentences(0)[0])
    held = S.heldout_combos(0)
    for x in joined:
        assert x["task"] == "asr" and x["voice"] == P.OUTPUT_VOICE.name
        assert x["text"] in sents or x["text"].startswith("a ")
        assert not any({s, c} <= set(x["text"].split()) and S.WHERE[p] in x["text"] for s, c, p in held)
        pieces = split_words(x["text"], 2)
        parts = [load_audio(os.path.join(d, "wav", P.wav_name(p, P.OUTPUT_VOICE, SR)), SR) for p in pieces]
        wav = load_audio(os.path.join(d, x["audio"]), SR)
        assert len(pieces) > 1 or len(x["text"].split()) <= 2
        assert len(wav) == sum(len(p) for p in parts)
        assert np.abs(wav - np.concatenate(parts)).max() < 2 / 32768


def test_mixed_joined_lines_join_pieces_of_different_training_texts():
    """With ``mixed`` 1 every joined line is 2-4 pieces, each a ``split_words`` piece of some training text, so
    its transcript is (almost always) no training text; with 0 each line is one training text's pieces."""
    from aromni.core.corpus.build import joined_texts
    from aromni.core.segmenting import split_words

    held = S.heldout_combos(0)
    combos = set(S.all_combos()) - held
    train_s, held_s = T.split_sentences(0)
    args = (combos, 0.2, train_s, 3)
    lines = joined_texts(np.random.default_rng(3), 300, *args, 1.0, held, held_s)
    assert lines == joined_texts(np.random.default_rng(3), 300, *args, 1.0, held, held_s)
    assert {len(x) for x in lines} == {2, 3, 4}
    texts = [" ".join(x) for x in lines]
    assert sum(t in set(train_s) for t in texts) < 5 and len(set(texts)) > 290
    where = {p: S.WHERE[p].split()[-1] for p in S.POSITIONS}
    for x in lines:
        for piece in x:
            assert 1 <= len(piece.split()) <= 3
            assert not any({s, c, where[p]} <= set(piece.split()) for s, c, p in held)
            assert not any(h in piece for h in held_s)
    whole = joined_texts(np.random.default_rng(3), 400, *args, 0.0, held, held_s)
    assert all(x == split_words(" ".join(x), 3) for x in whole)
    n_sent = [sum(" ".join(x) in set(train_s) for x in lines)
              for lines in (whole, joined_texts(np.random.default_rng(3), 400, *args, 0.5, held, held_s))]
    assert n_sent[0] > 160 and 60 < n_sent[1] < 140   # half the lines whole, half of those sentences


def test_tts_chunks_are_pieces_of_training_texts():
    from aromni.core.corpus.build import chunk_texts

    held = S.heldout_combos(0)
    combos = set(S.all_combos()) - held
    train_s, held_s = T.split_sentences(0)
    texts = chunk_texts(np.random.default_rng(5), 900, combos, 0.2, train_s, 0.3, held, held_s)
    assert texts == chunk_texts(np.random.default_rng(5), 900, combos, 0.2, train_s, 0.3, held, held_s)
    assert len(texts) == 900 and {len(t.split()) for t in texts} == {1, 2, 3}
    where = {p: S.WHERE[p].split()[-1] for p in S.POSITIONS}
    for t in texts:
        assert not any({s, c, where[p]} <= set(t.split()) for s, c, p in held)
        assert not any(h in t.lower() for h in held_s)
    # consecutive words of a training caption or sentence (written forms: capitals and final punctuation; a
    # piece with "and" may join a two-object caption's halves)
    caps = {S.caption({"objects": [{"shape": s, "colour": c, "position": p} | ({"size": z} if z else {})]})
            for s, c, p in combos for z in (None, *S.SIZES)}
    said = "|" + "|".join(f" {t} " for t in sorted(caps) + train_s) + "|"
    plain = [" ".join("i" if w == "I" else w.lower() for w in t.strip(".!?").split()) for t in texts]
    assert all(f" {p} " in said for p in plain if "and" not in p.split())
    assert "on the" in plain and "right" in plain


# --- with speech ---------------------------------------------------------------------------------
@needs_espeak
def test_configured_voices_exist():
    for v in P.input_voices() + [P.OUTPUT_VOICE, P.HELDOUT_VOICE]:
        P.check_voice(v)
    with pytest.raises(Exception, match="no voice"):
        P.check_voice(P.Voice("en-us+no-such-variant"))


def test_full_build_speech(full):
    d, summary = full
    train = read_manifest(os.path.join(d, "train.jsonl"))
    held = read_manifest(os.path.join(d, "heldout.jsonl"))
    assert {line["task"] for line in train} == TASKS and {line["task"] for line in held} == TASKS
    assert summary["sample_rate"] == SR and summary["utterances"] > 0
    audio_lines = [line for line in train + held if line["audio"]]
    for line in audio_lines:
        wav = load_audio(os.path.join(d, line["audio"]), SR)
        assert 0.3 < len(wav) / SR < 6.0 and np.abs(wav).max() > 0.05
    for line in train:
        assert line["voice"] != P.HELDOUT_VOICE.name
        for t in line.get("turns") or []:
            assert t.get("voice") != P.HELDOUT_VOICE.name
        if line["task"] == "tts":
            assert (line["voice"], line["speed"]) == (P.OUTPUT_VOICE.name, P.OUTPUT_VOICE.speed)
        if line["task"] in ("asr", "s2i"):
            if line.get("joined"):  # asr of the output voice said piece by piece (the ci preset has a few)
                assert line["task"] == "asr" and line["voice"] == P.OUTPUT_VOICE.name
            else:
                assert line["voice"] in P.INPUT_VOICES and line["speed"] in P.INPUT_SPEEDS
            assert line["text"] == T.normalise(line["text"])
        if line["task"] == "s2i":
            assert S.attrs_match(S.parse_caption(line["text"]), line["attrs"])
    vh = [line for line in held if line.get("voice_heldout")]
    assert vh and all(line["voice"] == P.HELDOUT_VOICE.name for line in vh)
    assert {line["task"] for line in vh} == {"asr", "s2i"}
    assert all("voice_heldout" in line for line in held if line["task"] in ("asr", "s2i"))


def test_full_build_is_deterministic_and_cached(full, tmp_path):
    d, _ = full
    build_corpus(str(tmp_path), seed=0, preset="ci", sample_rate=SR)
    assert manifests(d) == manifests(str(tmp_path))
    wav_dir = os.path.join(d, "wav")
    before = {f: os.stat(os.path.join(wav_dir, f)).st_mtime_ns for f in os.listdir(wav_dir)}
    build_corpus(d, seed=0, preset="ci", sample_rate=SR)  # rebuild in place: every utterance is cached
    after = {f: os.stat(os.path.join(wav_dir, f)).st_mtime_ns for f in os.listdir(wav_dir)}
    assert before == after
    a = open(os.path.join(wav_dir, sorted(before)[0]), "rb").read()
    assert a == open(os.path.join(str(tmp_path), "wav", sorted(before)[0]), "rb").read()


# --- CLI -----------------------------------------------------------------------------------------
def aromni(*args):
    return subprocess.run([sys.executable, "-m", "aromni", *args], capture_output=True, cwd=ROOT, timeout=120)


def test_cli_corpus(tmp_path):
    r = aromni("corpus", str(tmp_path / "c"), "--preset", "ci", "--no-speech", "--seed", "3", "--json", "-q")
    assert r.returncode == 0, r.stderr
    assert r.stderr == b""
    summary = json.loads(r.stdout)
    assert summary["seed"] == 3 and summary["speech"] is False
    assert os.path.isfile(tmp_path / "c" / "train.jsonl") and os.path.isfile(tmp_path / "c" / "corpus.json")
    r = aromni("corpus", str(tmp_path / "d"), "--preset", "huge")
    assert r.returncode == 2 and b"huge" in r.stderr and r.stdout == b""


def test_generation_targets_are_drawn_without_jitter(tmp_path):
    """canonical_targets: t2i images and chat drawings are canonical (offset 0); images the model reads keep
    their jitter; n_t2i adds t2i-only scenes."""
    d = str(tmp_path)
    build_corpus(d, seed=3, preset="ci", speech=False, canonical_targets=True, n_t2i=8)
    lines = read_manifest(os.path.join(d, "train.jsonl"))
    offsets = {"read": [], "drawn": []}
    for line in lines:
        if line["task"] in ("caption", "t2i"):
            offsets["read" if line["task"] == "caption" else "drawn"] += [o["offset"] for o in line["attrs"]["objects"]]
        for t in line.get("turns") or []:
            if t.get("image"):
                offsets["drawn" if t["role"] == "assistant" else "read"] += [o["offset"] for o in t["attrs"]["objects"]]
    assert offsets["drawn"] and all(o == [0, 0] for o in offsets["drawn"])
    assert any(o != [0, 0] for o in offsets["read"])
    assert sum(line["task"] == "t2i" for line in lines) > sum(line["task"] == "caption" for line in lines)


# ----------------------------------------------------------------------------------------------
# the wide preset: everyday lines, free phrasings, many voices (the default preset phrases written requests too)
# ----------------------------------------------------------------------------------------------
WIDE_TINY = dict(world="wide", voices="many", phrasing_prob=0.5, heldout_phrasings=6)


def test_wide_world_text_and_phrasings(tmp_path):
    from aromni.core.corpus import phrasing as F

    d = str(tmp_path / "w")
    build_corpus(d, seed=2, preset="ci", speech=False, max_sentences=400, n_t2i=60, **WIDE_TINY)
    train, held = (read_manifest(os.path.join(d, n)) for n in ("train.jsonl", "heldout.jsonl"))
    texts = {line["text"] for line in train if line["task"] == "text"}
    assert {"alpha", "seven", "january"} <= texts  # single words of the wider world are trained
    frames = {F.frame_of(line["text"]) for line in train if line["task"] == "t2i"}
    assert len(frames & set(F.TRAIN_FRAMES)) >= 5  # requests in many training frames
    for line in train:
        if line["task"] == "t2i":
            assert F.frame_of(line["text"]) not in F.HELDOUT_FRAMES
    ph = [line for line in held if line.get("group") == "held-out phrasing"]
    assert len(ph) == 6 and all(F.frame_of(x["text"]) in F.HELDOUT_FRAMES for x in ph)
    assert all(F.check_phrasing(x["text"], x["attrs"]) for x in ph)
    assert {line.get("group") for line in held if line["task"] == "t2i"} == {"canonical", "held-out phrasing"}
    held_sents = {line["text"] for line in held if line["task"] == "text"}
    assert held_sents and not held_sents & texts


def test_default_preset_manifests_do_not_change_with_the_new_options(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    build_corpus(a, seed=1, preset="ci", speech=False)
    build_corpus(b, seed=1, preset="ci", speech=False, world="shapes", voices="espeak", phrasing_prob=0.0)
    assert manifests(a) == manifests(b)


@needs_espeak
def test_spoken_requests_stay_captions_without_spoken_phrasing(tmp_path):
    """spoken_phrasing=False (the default preset): free phrasings only in written t2i requests; what speech -> image
    lines (and the asr lines of the same clips) say is a caption or one of its paraphrases."""
    from aromni.core.corpus import phrasing as F

    d = str(tmp_path / "c")
    build_corpus(d, seed=0, preset="ci", sample_rate=SR, n_s2i=24, n_t2i=40, n_chat=0, n_tts_chunks=0,
                 n_asr_joined=0, max_sentences=2, phrasing_prob=0.5, spoken_phrasing=False)
    train = read_manifest(os.path.join(d, "train.jsonl"))
    said = [x for x in train if x["task"] == "s2i"]
    assert len(said) == 24
    for x in said:
        assert x["text"] in {S.caption(x["attrs"], v) for v in range(S.N_VARIANTS)}, x["text"]
    frames = {F.frame_of(x["text"]) for x in train if x["task"] == "t2i"}
    assert len(frames & set(F.TRAIN_FRAMES) - {"{}"}) >= 3  # the written requests are phrased


@pytest.mark.slow
def test_wide_corpus_speaks_with_many_voices(tmp_path):
    from aromni.core.corpus import voices as V

    why = next((V.missing(e) for e in ("hibari", "kokoro", "flite") if V.missing(e)), None) or (
        None if P.espeak_path() else "espeak-ng not installed")
    if why:
        pytest.skip(why)
    d = str(tmp_path / "w")
    build_corpus(d, seed=0, preset="ci", sample_rate=SR, n_s2i=4, n_chat=2, n_tts_chunks=2, n_asr_joined=2,
                 max_sentences=8, **WIDE_TINY)
    train, held = (read_manifest(os.path.join(d, n)) for n in ("train.jsonl", "heldout.jsonl"))
    vs = P.VOICE_SETS["many"]
    assert {x["voice"] for x in train if x["task"] == "tts"} == {vs.output.name}
    heard = {x["voice"] for x in train if x["task"] == "asr" and not x.get("joined")}
    assert heard <= {v.name for v in vs.input} and any(":" in v for v in heard)
    assert not heard & {v.name for v in vs.heldout}
    held_voices = {x["voice"] for x in held if x.get("voice_heldout")}
    assert held_voices and held_voices <= {v.name for v in vs.heldout}
    for x in train[:40] + held:
        if x["audio"]:
            wav = load_audio(os.path.join(d, x["audio"]), SR)
            assert 0.1 < len(wav) / SR < 15 and np.abs(wav).max() > 0.01
    summary = json.load(open(os.path.join(d, "corpus.json")))
    assert summary["voices"]["output"] == {"name": "hibari:heart", "speed": 160}
