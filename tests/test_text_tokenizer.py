"""Text tokenizers: bytes, SentencePiece (+ BPE training), Chameleon text_tokenizer.json."""
from __future__ import annotations

import json
import os

import pytest

from _tiny import chameleon_vocab, make_chameleon_json
from aromni.core.bundle import load_tokenizer
from aromni.core.errors import AromniError, CheckpointError
from aromni.core.protocols import TextTokenizer
from aromni.core.text_tokenizer import (ByteTokenizer, ChameleonTextTokenizer, SentencePieceTokenizer,
                                        check_text_tokenizer, image_code_name, image_name_code)
from aromni.core.train.bpe import train_bpe
from aromni.core.vocab import arom_layout, compact_layout

SAMPLES = ["USER:", "This is input: ", " GPT:", "  two  spaces\nand a newline\t", "héllo wörld ✓ 日本語", ""]
CORPUS = ["a red circle above a blue square", "the quick brown fox jumps over the lazy dog",
          "two green triangles left of a yellow star", "Convert this text into speech.",
          "Describe this image.", "numbers 12345 and 67890"] * 8


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    return train_bpe(CORPUS, 400, str(tmp_path_factory.mktemp("bpe") / "tok"))


@pytest.fixture(scope="module")
def cham_json(tmp_path_factory):
    return make_chameleon_json(str(tmp_path_factory.mktemp("cham") / "text_tokenizer.json"))


# --- bytes ----------------------------------------------------------------------------------------
def test_bytes_round_trip_and_offset():
    layout = compact_layout(text=256, image=64, audio=32, image_tokens=16)
    tok = ByteTokenizer(offset=layout.text_start)
    assert isinstance(tok, TextTokenizer)
    for s in SAMPLES:
        ids = tok.encode(s)
        assert all(layout.is_text(i) for i in ids)
        assert tok.decode(ids) == s
    assert tok.encode("A") == [layout.text_start + 65]
    # ids outside the text range are skipped
    ids = tok.encode("ab")
    assert tok.decode([layout.bos, ids[0], layout.image_offset + 3, ids[1], layout.eos]) == "ab"
    check_text_tokenizer(tok, layout)
    with pytest.raises(CheckpointError, match=r"uses ids \[16, 272\).*keeps text in \[16, 116\)"):
        check_text_tokenizer(tok, compact_layout(text=100, image=64, audio=32, image_tokens=16))


def test_bytes_bundle_spec(tmp_path):
    spec = ByteTokenizer(offset=16).save(str(tmp_path))
    assert spec == {"type": "bytes", "offset": 16}
    tok = load_tokenizer("text", json.loads(json.dumps(spec)), str(tmp_path))
    assert isinstance(tok, ByteTokenizer) and tok.offset == 16


# --- SentencePiece / BPE training -------------------------------------------------------------------
def test_bpe_training_is_deterministic(spm_model, tmp_path):
    other = train_bpe(CORPUS, 400, str(tmp_path / "again" / "tok"))
    a, b = SentencePieceTokenizer(spm_model), SentencePieceTokenizer(other)
    pieces = lambda t: [(t.sp.id_to_piece(i), t.sp.get_score(i)) for i in range(t.vocab_size)]
    assert pieces(a) == pieces(b)
    # learned merges: frequent words become few pieces
    assert len(a.encode("the quick brown fox")) < len("the quick brown fox")
    # no bos/eos/pad pieces; unk is piece 0; byte fallback
    assert a.sp.unk_id() == 0 and a.sp.bos_id() == -1 and a.sp.eos_id() == -1 and a.sp.pad_id() == -1
    assert a.sp.piece_to_id("<0x41>") > 0


def test_bpe_rejects_bad_requests(tmp_path):
    with pytest.raises(AromniError, match="empty corpus"):
        train_bpe(["", ""], 400, str(tmp_path / "x"))
    with pytest.raises(AromniError, match="too small"):
        train_bpe(CORPUS, 100, str(tmp_path / "x"))


def test_sentencepiece_round_trip_offset_and_layout(spm_model):
    layout = compact_layout(text=512, image=64, audio=32, image_tokens=16)
    tok = SentencePieceTokenizer(spm_model, layout=layout)
    assert isinstance(tok, TextTokenizer)
    assert tok.offset == layout.text_start
    for s in SAMPLES:  # verbatim, including unseen characters (byte fallback) and whitespace
        ids = tok.encode(s)
        assert all(layout.text_start <= i < layout.text_start + tok.vocab_size for i in ids)
        assert tok.decode(ids) == s
    # segment-by-segment encoding concatenates exactly
    assert tok.decode(tok.encode("USER:") + tok.encode(" hi there")) == "USER: hi there"
    # non-text ids are skipped
    ids = tok.encode("red circle")
    assert tok.decode([layout.bos] + ids[:1] + [layout.audio_offset] + ids[1:] + [layout.eom]) == "red circle"
    # same pieces from bytes, offset given directly
    tok2 = SentencePieceTokenizer(open(spm_model, "rb").read(), offset=1000)
    assert [i - 1000 for i in tok2.encode("red circle")] == [i - layout.text_start for i in ids]


def test_sentencepiece_too_big_for_layout(spm_model):
    small = compact_layout(text=300, image=64, audio=32, image_tokens=16)
    with pytest.raises(CheckpointError, match=r"keeps text in \[16, 316\)"):
        SentencePieceTokenizer(spm_model, layout=small)


def test_sentencepiece_bad_file(tmp_path):
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="not a SentencePiece model"):
        SentencePieceTokenizer(str(bad))
    with pytest.raises(CheckpointError, match="cannot read"):
        SentencePieceTokenizer(str(tmp_path / "missing.model"))


def test_sentencepiece_bundle_spec(spm_model, tmp_path):
    tok = SentencePieceTokenizer(spm_model, offset=16)
    spec = tok.save(str(tmp_path))
    assert spec["type"] == "sentencepiece" and os.path.isfile(tmp_path / "text_tokenizer.model")
    back = load_tokenizer("text", spec, str(tmp_path))
    assert back.offset == 16 and back.encode("a blue square") == tok.encode("a blue square")
    with pytest.raises(CheckpointError, match="pieces"):
        load_tokenizer("text", dict(spec, vocab_size=spec["vocab_size"] + 1), str(tmp_path))


# --- Chameleon text_tokenizer.json ------------------------------------------------------------------
def test_image_name_mapping():
    assert image_name_code("IMGIMGFDZ") == 53
    assert image_name_code("IMGIMGAZ") == 0
    assert image_name_code("IMGIMGIBJBZ") == 8191
    assert image_name_code("IMGIMGHBIJZ") == 7189
    assert image_name_code("hello") is None and image_name_code("IMGIMGZ") is None
    for c in (0, 7, 53, 8191):
        assert image_name_code(image_code_name(c)) == c


def test_chameleon_ids_and_round_trip(cham_json):
    tok = ChameleonTextTokenizer(cham_json)
    assert isinstance(tok, TextTokenizer)
    layout = arom_layout()
    tok.check_layout(layout)
    assert tok.text_start == 16384 and len(tok.image_codes) == 8192
    assert tok.image_codes[4] == 0 and tok.image_codes[8195] == 8191
    assert tok.encode("!") == [16384]  # byte symbols start at 16384, as in Chameleon
    for s in SAMPLES:
        ids = tok.encode(s)
        assert all(layout.is_text(i) for i in ids), s  # no <s> from the post-processor
        assert tok.decode(ids) == s
    # control, image and audio ids are not text
    ids = tok.encode(" the cat")
    mixed = [0, ids[0], 8197, 4, 5, 8196, layout.audio_offset + 7, 12830] + ids[1:] + [12831, 2]
    assert tok.decode(mixed) == " the cat"
    assert tok.token_name(8197) == "<racm3:break>"


def test_chameleon_rejects_shifted_image_names(tmp_path):
    vocab, merges = chameleon_vocab(8192)
    # swap two image names: code != id - 4
    a, b = image_code_name(10), image_code_name(11)
    vocab[a], vocab[b] = vocab[b], vocab[a]
    path = make_chameleon_json(str(tmp_path / "t.json"), vocab=vocab, merges=merges)
    with pytest.raises(CheckpointError, match=r"IMGIMGBBZ \(code 11\) has id 14, expected 15"):
        ChameleonTextTokenizer(path)


def test_chameleon_layout_mismatch(cham_json):
    tok = ChameleonTextTokenizer(cham_json)
    with pytest.raises(CheckpointError, match="do not fit"):
        tok.check_layout(compact_layout(text=256, image=64, audio=32, image_tokens=16))


def test_chameleon_bad_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CheckpointError, match="not a tokenizers JSON"):
        ChameleonTextTokenizer(str(bad))
    with pytest.raises(CheckpointError, match="cannot read"):
        ChameleonTextTokenizer(str(tmp_path / "missing.json"))


def test_chameleon_bundle_spec(cham_json, tmp_path):
    tok = ChameleonTextTokenizer(cham_json)
    spec = tok.save(str(tmp_path))
    assert spec == {"type": "chameleon", "file": "text_tokenizer.json"}
    back = load_tokenizer("text", spec, str(tmp_path))
    assert isinstance(back, ChameleonTextTokenizer) and back.encode("the cat") == tok.encode("the cat")
    assert back.save(str(tmp_path)) == spec  # saving onto itself is a no-op


def test_tiny_bundle_text_tokenizer(tiny_bundle):
    from aromni.core.bundle import load_bundle

    omni = load_bundle(tiny_bundle)
    assert isinstance(omni.text, ByteTokenizer) and omni.text.offset == omni.vocab.text_start
    check_text_tokenizer(omni.text, omni.vocab)
    assert omni.text.decode(omni.text.encode("a red circle")) == "a red circle"
