"""core/corpus/codec_data.py: the codec's many-voice, augmented training clips."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from aromni.core.corpus import codec_data as C
from aromni.core.corpus.augment import augment
from aromni.core.corpus.voices import Voice

VOICES = [Voice("espeak-ng", "en-us"), Voice("espeak-ng", "en-gb+f3"), Voice("flite", "slt"), Voice("flite", "rms"),
          Voice("kokoro", "jf_gongitsune"), Voice("piper", "en_US-joe-medium")]


def test_plan_is_seeded_mixes_engines_words_and_augmentation_and_never_uses_heldout_voices():
    cfg = C.CodecCorpusConfig(n_clips=400, seed=3)
    texts, words = ["hello world", "good morning"], ["alpha", "river", "stone", "quiet", "market"]
    a, b = C.plan(cfg, VOICES, texts, words), C.plan(cfg, VOICES, texts, words)
    assert a == b and len(a) == 400
    assert a != C.plan(C.CodecCorpusConfig(n_clips=400, seed=4), VOICES, texts, words)
    used = {it["voice"] for it in a}
    assert used.isdisjoint(C.HELDOUT_VOICES) and {"espeak-ng:en-us", "flite:slt", "piper:en_US-joe-medium"} <= used
    said_words = [it for it in a if it["text"] not in texts]
    assert 0.35 < len(said_words) / 400 < 0.65
    assert all(set(it["text"].split()) <= set(words) and 4 <= len(it["text"].split()) <= 12 for it in said_words)
    aug = sum(it["augment_seed"] is not None for it in a) / 400
    assert 0.65 < aug < 0.85 and all(0.85 <= it["speed"] <= 1.2 for it in a)
    # the manifest's chain is the one render applies
    wav = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    for it in [x for x in a if x["augment_seed"] is not None][:5]:
        assert C.chain_of(it) == augment(wav, 16000, it["augment_seed"])[1].to_dict()


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_write_renders_clips_resumes_and_writes_a_codec_manifest(tmp_path, monkeypatch):
    monkeypatch.setattr(C.V, "list_voices", lambda: [Voice("espeak-ng", "en-us"), Voice("espeak-ng", "en-gb")])
    cfg = C.CodecCorpusConfig(n_clips=6, seed=1, augment_share=0.5)
    m = C.write_codec_corpus(str(tmp_path), cfg, quiet=True)
    lines = [json.loads(x) for x in open(m)]
    assert [x["id"] for x in lines] == [f"codec-{i:06d}" for i in range(6)]
    for x in lines:
        y, sr = sf.read(tmp_path / x["audio"])
        assert sr == 16000 and len(y) > 0.2 * sr and abs(y).max() <= 1.0
    first = (tmp_path / lines[0]["audio"]).read_bytes()
    assert C.write_codec_corpus(str(tmp_path), cfg, quiet=True) == m  # resumed: the clips are kept as they are
    assert (tmp_path / lines[0]["audio"]).read_bytes() == first
    assert [json.loads(x) for x in open(m)] == lines


def test_plan_refuses_no_voices_and_no_sentences():
    from aromni.core.errors import AromniError

    cfg = C.CodecCorpusConfig(n_clips=4)
    with pytest.raises(AromniError, match="no voices installed"):
        C.plan(cfg, [Voice("flite", "rms")], ["hello"], [])  # the only voice is held out
    with pytest.raises(AromniError, match="no sentences"):
        C.plan(cfg, VOICES, [], [])
