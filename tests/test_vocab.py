"""Vocabulary layouts: AR-Omni preset ids, compact layouts, fingerprints, compatibility checks."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from aromni.core.errors import InputError
from aromni.core.vocab import (N_COMPACT_SPECIALS, SPECIAL_NAMES, SPECIAL_TEXT, VocabLayout, arom_layout,
                               compact_layout, get_layout)


def test_arom_layout_ids_match_reference():
    v = arom_layout()
    assert v.vocab_size == 65536
    assert (v.bos, v.pad, v.eos, v.unk) == (0, 1, 2, 3)
    assert (v.boi, v.eoi) == (8197, 8196)
    assert (v.boa, v.eoa, v.eoh, v.eom, v.ins, v.res) == (12821, 12820, 12830, 12831, 12840, 12841)
    assert v.image_range == range(4, 8196)
    assert v.audio_range == range(8724, 12820)
    assert v.text_range == range(16384, 65536)
    assert v.image_id(53) == 57 and v.image_code(57) == 53
    assert v.audio_id(0) == 8724 and v.audio_code(12819) == 4095
    assert v.is_image(4) and v.is_image(8195) and not v.is_image(8196) and not v.is_image(3)
    assert v.is_audio(8724) and v.is_audio(12819) and not v.is_audio(12820)
    assert v.is_text(16384) and v.is_text(65535) and not v.is_text(16383)
    # specials are outside every code/text range
    for name in SPECIAL_NAMES:
        t = v.specials[name]
        assert not (v.is_image(t) or v.is_audio(t) or v.is_text(t)), name
        assert v.special_name(t) == name
    assert v.special_name(9000) is None
    assert v.image_tokens == 1024


def test_code_id_mapping_on_arrays_and_tensors():
    v = arom_layout()
    codes = np.array([0, 1, 4095])
    assert v.audio_id(codes).tolist() == [8724, 8725, 12819]
    t = torch.tensor([[0, 8191]])
    assert v.image_code(v.image_id(t)).tolist() == [[0, 8191]]


def test_compact_layout_is_dense_and_rounded():
    v = compact_layout(text=256, image=64, audio=100, image_tokens=16)
    assert v.text_start == N_COMPACT_SPECIALS and v.text_end == N_COMPACT_SPECIALS + 256
    assert v.image_offset == v.text_end and v.audio_offset == v.image_offset + 64
    assert v.vocab_size % 64 == 0 and v.vocab_size >= v.audio_offset + 100
    assert sorted(v.specials.values()) == list(range(len(SPECIAL_NAMES)))
    ranges = [set(v.text_range), set(v.image_range), set(v.audio_range), set(v.specials.values())]
    assert sum(len(r) for r in ranges) == len(set().union(*ranges))  # disjoint
    assert v.image_tokens == 16


def test_special_text_names_cover_all_specials():
    assert set(SPECIAL_TEXT) == set(SPECIAL_NAMES)
    assert SPECIAL_TEXT["boi"] == "<boi>" and SPECIAL_TEXT["ins"] == "<-Ins->"


def test_dict_round_trip_and_fingerprint():
    for v in (arom_layout(), compact_layout(text=256, image=64, audio=100, image_tokens=16)):
        d = json.loads(json.dumps(v.to_dict()))
        back = VocabLayout.from_dict(d)
        assert back == v and back.fingerprint == v.fingerprint
        assert get_layout(d) == v and get_layout(v) is v
    a = compact_layout(text=256, image=64, audio=100, image_tokens=16)
    fp = a.fingerprint
    assert fp.startswith("compact:") and len(fp.split(":")[1]) == 8
    # any id change changes the fingerprint; the name is only a label
    assert compact_layout(text=256, image=64, audio=101, image_tokens=16).fingerprint != fp
    assert compact_layout(text=256, image=64, audio=100, image_tokens=17).fingerprint != fp
    renamed = compact_layout(text=256, image=64, audio=100, image_tokens=16, name="x")
    assert renamed.fingerprint == "x:" + fp.split(":")[1]
    d = a.to_dict()
    d["specials"] = dict(d["specials"], eom=13)
    assert VocabLayout.from_dict(d).fingerprint != fp
    assert arom_layout().fingerprint == arom_layout().fingerprint  # stable


def test_check_compatible():
    v, other = arom_layout(), compact_layout(text=256, image=64, audio=100, image_tokens=16)
    v.check_compatible(v.fingerprint)
    v.check_compatible(None)  # unknown origin: accepted
    with pytest.raises(InputError, match=r"toks\.npy was made for vocabulary layout compact:.*uses ar-omni:"):
        v.check_compatible(other.fingerprint, "toks.npy")


def test_get_layout_errors():
    assert get_layout("ar-omni") == arom_layout()
    with pytest.raises(InputError, match="unknown vocabulary layout 'nope'"):
        get_layout("nope")


def test_invalid_layouts_are_rejected():
    d = arom_layout().to_dict()
    with pytest.raises(ValueError, match="lacks special tokens"):
        VocabLayout.from_dict(dict(d, specials={"bos": 0}))
    with pytest.raises(ValueError, match="audio range"):
        VocabLayout.from_dict(dict(d, audio_offset=65000))
    with pytest.raises(ValueError, match="text range"):
        VocabLayout.from_dict(dict(d, text_end=70000))


def test_unknown_attribute():
    with pytest.raises(AttributeError):
        arom_layout().nope  # noqa: B018
