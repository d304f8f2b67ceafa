"""Phrasings of scene prompts: every one states its scene; held-out frames never occur in training."""
from __future__ import annotations

import numpy as np

from aromni.core.corpus import phrasing as F
from aromni.core.corpus import scenes as S


def test_every_phrasing_states_its_scene():
    rng = np.random.default_rng(0)
    seen_frames = set()
    for i in range(600):
        a = S.sample_scene(rng, two_prob=0.3)
        held = bool(i % 2)
        text = F.phrase(a, rng, heldout=held)
        assert F.check_phrasing(text, a), (text, a)
        frame = F.frame_of(text)
        assert frame in (F.HELDOUT_FRAMES if held else F.TRAIN_FRAMES), (text, frame)
        seen_frames.add(frame)
    assert seen_frames == set(F.TRAIN_FRAMES) | set(F.HELDOUT_FRAMES)


def test_heldout_frames_are_new_combinations_of_training_words():
    assert not set(F.TRAIN_FRAMES) & set(F.HELDOUT_FRAMES)
    train_words = {w for f in F.TRAIN_FRAMES for w in f.split() if w != "{}"}
    for f in F.HELDOUT_FRAMES:
        assert {w for w in f.split() if w != "{}"} <= train_words, f


def test_a_wrong_phrasing_is_caught():
    a = {"background": "white", "objects": [{"shape": "circle", "colour": "red", "size": "large",
                                              "position": "left"}]}
    assert F.check_phrasing("Please show me a big red circle on the left.", a)
    assert F.check_phrasing("on the left there is a huge red circle", a)
    assert not F.check_phrasing("draw a tiny red circle on the left", a)
    assert not F.check_phrasing("draw a big red box on the left", a)
    assert F.frame_of("A yellow star.") == "{}" and F.frame_of("why not") is None
