"""Real human speech from Debian packages: the manifest, and the codec's real-speech ceiling with Whisper."""
from __future__ import annotations

import pytest

from aromni.core.eval import real_speech

pytestmark = pytest.mark.skipif(real_speech.available() is not None,
                                reason=str(real_speech.available()))


def test_clips_cover_every_group_with_transcripts():
    clips = real_speech.clips()
    groups = {c.group for c in clips}
    assert groups == set(real_speech.GROUPS)
    by_name = {c.audio.rsplit("/", 2)[-2] + "/" + c.audio.rsplit("/", 1)[-1]: c.text for c in clips}
    assert by_name["digits/7.wav"] == "seven"
    assert all(c.text and "[" not in c.text for c in clips)
    assert all(len(c.text.split()) >= 4 for c in clips if c.group == "asterisk prompts")
    assert sum(c.group == "librivox" for c in clips) == 5


def test_manifest_loads_as_an_asr_split_with_groups(tmp_path):
    from aromni.core.eval.data import load_dataset

    items = real_speech.clips(("asterisk words", "librivox"))
    path = tmp_path / "real.jsonl"
    real_speech.write_manifest(str(path), items)
    ds = load_dataset(str(path), "asr", "real")
    assert len(ds.items) == len(items)
    assert {it.group for it in ds.items} == {"asterisk words", "librivox"}


def test_codec_ceiling_measures_original_and_reconstruction():
    from aromni.core.api import load
    from aromni.core.eval.judge import make_judge, whisper_unavailable

    if whisper_unavailable():
        pytest.skip(whisper_unavailable())
    omni = load(None, model=False)
    clips = [c for c in real_speech.clips(("librivox",))][:1]
    res = real_speech.codec_ceiling(omni.speech, make_judge("whisper"), clips, unquantised=True)
    m = res["librivox"]
    assert 0.0 <= m["wer_unquantised"] <= 3.0
    assert m["n"] == 1
    assert m["wer_original"] <= 0.25  # Whisper hears the LibriVox original (a real judge on real speech)
    assert m["points_lost"] == pytest.approx(100 * (m["wer_reconstructed"] - m["wer_original"]))
