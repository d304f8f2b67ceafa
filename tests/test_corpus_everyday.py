"""The wider world's lines: numbers in words, the split, and the real-speech words they cover."""
from __future__ import annotations

import pytest

from aromni.core.corpus import everyday as E


def test_number_and_ordinal_words():
    assert E.number_words(0) == "zero" and E.number_words(40) == "forty"
    assert E.number_words(105) == "one hundred five"
    assert E.number_words(2_019) == "two thousand nineteen"
    assert E.number_words(3_000_070) == "three million seventy"
    assert E.ordinal_words(21) == "twenty first" and E.ordinal_words(30) == "thirtieth"
    assert [E.year_words(y) for y in (1990, 2005, 1905, 2019, 1900, 2000)] == [
        "nineteen ninety", "two thousand five", "nineteen oh five", "twenty nineteen", "nineteen hundred",
        "two thousand"]
    with pytest.raises(ValueError):
        E.number_words(-1)


def test_split_is_deterministic_and_heldout_lines_use_training_words():
    train, held = E.split_everyday(0)
    assert (train, held) == E.split_everyday(0) and (train, held) != E.split_everyday(1)
    assert len(train) > 1500 and len(held) > 150 and not set(train) & set(held)
    words = {w for s in train for w in s.split()}
    assert all(len(s.split()) > 1 and set(s.split()) <= words for s in held)
    fixed, _ = E.everyday_lines(0)
    assert set(fixed) <= set(train)  # every single word is trained
    assert all(s == s.lower() and "  " not in s for s in train + held)


def test_the_real_speech_word_clips_are_in_domain():
    """Every word of the Asterisk digits/, letters/ and phonetic/ clips (the ASR target's real speech) is a
    training word: in domain, said by a speaker the model never heard."""
    from aromni.core.corpus.sentences import normalise
    from aromni.core.eval import real_speech

    if real_speech.available():
        pytest.skip(real_speech.available())
    words = {w for s in E.split_everyday(0)[0] for w in normalise(s).split()}
    clips = [c for c in real_speech.clips(("asterisk words",)) if c.group == "asterisk words"]
    missing = {w for c in clips for w in normalise(c.text).split()} - words
    # symbol names (ampersand, backslash, ...) are not part of the world
    covered = [c for c in clips if set(normalise(c.text).split()) <= words]
    assert len(covered) >= 0.95 * len(clips), sorted(missing)
