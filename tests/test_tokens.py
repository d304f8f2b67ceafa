"""Token streams: NPY / JSON / line formats, layout fingerprints, span validation."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest

from aromni.core.errors import InputError
from aromni.core.tokens import (LineWriter, Segment, TokenStream, audio_block, cut_at_stop, format_lines,
                                image_block, iter_line_sequences, parse_response, parse_tokens, read_tokens,
                                split_segments, to_npy_bytes, validate, write_tokens)
from aromni.core.vocab import arom_layout, compact_layout

AROM = arom_layout()
COMPACT = compact_layout(text=256, image=64, audio=100, image_tokens=4)


def mixed(v):
    """bos, text, an image, text, an audio clip, eom: valid for layout ``v``."""
    t = v.text_start
    return ([v.bos, t + 1, t + 2] + image_block([0, 1, 2, v.image_codes - 1], v) + [t + 3]
            + audio_block([5, 6, v.audio_codes - 1], v) + [v.eoh, v.eom])


@pytest.mark.parametrize("v", [AROM, COMPACT], ids=["ar-omni", "compact"])
@pytest.mark.parametrize("fmt", ["npy", "json", "lines"])
@pytest.mark.parametrize("with_fp", [True, False])
def test_round_trip(tmp_path, v, fmt, with_fp):
    seqs = [mixed(v), [v.bos, v.text_start], [v.text_end - 1] * 5]
    fp = v.fingerprint if with_fp else None
    for s in (seqs, seqs[:1]):
        stream = TokenStream(s, fp)
        path = str(tmp_path / f"t.{fmt if fmt != 'lines' else 'txt'}")
        write_tokens(stream, path)
        back = read_tokens(path)
        assert back.sequences == s and back.layout == fp
        # the same through stdout/stdin
        buf = io.BytesIO()
        write_tokens(stream, "-", fmt=fmt, out=buf)
        back = read_tokens("-", stdin=io.BytesIO(buf.getvalue()))
        assert back.sequences == s and back.layout == fp


def test_npy_is_plain_numpy_with_layout_comment(tmp_path):
    v = AROM
    seqs = [mixed(v), [v.bos, v.text_start]]
    data = to_npy_bytes(TokenStream(seqs, v.fingerprint))
    assert len(data) % 4 == 0 and data.index(b"\n") + 1 in (64, 128, 192)  # header aligned to 64 bytes
    assert f"aromni-layout={v.fingerprint}".encode() in data[:256]
    arr = np.load(io.BytesIO(data))  # numpy ignores the comment
    assert arr.dtype == np.int32 and arr.shape == (2, len(seqs[0]))
    assert arr[1, :2].tolist() == seqs[1] and (arr[1, 2:] == -1).all()
    one = np.load(io.BytesIO(to_npy_bytes(TokenStream([seqs[0]], v.fingerprint))))
    assert one.ndim == 1 and one.tolist() == seqs[0]
    # files written by numpy itself are read too (no fingerprint)
    p = tmp_path / "np.npy"
    np.save(p, np.array(seqs[0], dtype=np.int64))
    back = read_tokens(str(p))
    assert back.sequences == [seqs[0]] and back.layout is None


def test_json_forms():
    assert parse_tokens(b"[1, 2, 3]").sequences == [[1, 2, 3]]
    assert parse_tokens(b"  [[1], [2, 3]]\n").sequences == [[1], [2, 3]]
    s = parse_tokens(b'{"layout": "x:1", "sequences": [[4, 5]]}')
    assert s.sequences == [[4, 5]] and s.layout == "x:1"
    assert parse_tokens(b'{"tokens": [7]}').sequences == [[7]]


def test_lines_forms_and_fingerprint():
    s = parse_tokens(b"# a comment\n#aromni-layout=ar-omni:abcd1234\n1 2 3\n\n  4 5  \n")
    assert s.sequences == [[1, 2, 3], [4, 5]] and s.layout == "ar-omni:abcd1234"
    text = format_lines(TokenStream([[1, 2], [3]], "compact:0000ffff"))
    assert text == "#aromni-layout=compact:0000ffff\n1 2\n3\n"


def test_line_writer_and_iter():
    buf = io.BytesIO()
    w = LineWriter(buf, layout=AROM.fingerprint)
    w.tokens([0, 16400])
    w.token(2)
    w.end()
    w.tokens([5])
    w.end()
    assert buf.getvalue() == f"#aromni-layout={AROM.fingerprint}\n0 16400 2\n5\n".encode()
    got = list(iter_line_sequences(io.BytesIO(buf.getvalue())))
    assert got == [([0, 16400, 2], AROM.fingerprint), ([5], AROM.fingerprint)]


@pytest.mark.parametrize("data, msg", [
    (b"", "empty token input"),
    (b"   \n", "empty token input"),
    (b"\xff\xfe\x00garbage", "not a token file"),
    (b"1 2 three", r"line 1: 'three' is not a token id"),
    (b"1 2\n3 --4", r"line 2: '--4' is not a token id"),
    ("1 ²".encode(), r"'²' is not a token id"),
    (b"1 2_000", r"'2_000' is not a token id"),
    (b"[1, 2", "invalid JSON"),
    (b"[1, 2.5]", "JSON tokens must be"),
    (b"[true, false]", "JSON tokens must be"),
    (b'[[1], 2]', "JSON tokens must be"),
    (b'{"layout": "x"}', "JSON tokens must be"),
    (b"\x93NUMPY\x01\x00garbage", "not a readable NPY"),
])
def test_garbage_input(data, msg):
    with pytest.raises(InputError, match=msg):
        parse_tokens(data, "in.tok")


def test_npy_wrong_dtype_or_rank():
    buf = io.BytesIO()
    np.save(buf, np.zeros(3, dtype=np.float32))
    with pytest.raises(InputError, match="holds float32"):
        parse_tokens(buf.getvalue())
    buf = io.BytesIO()
    np.save(buf, np.zeros((1, 2, 3), dtype=np.int32))
    with pytest.raises(InputError, match="3 dimensions"):
        parse_tokens(buf.getvalue())


def test_read_tokens_missing_file(tmp_path):
    with pytest.raises(InputError, match="missing.npy"):
        read_tokens(str(tmp_path / "missing.npy"))


def test_write_tokens_unknown_format(tmp_path):
    with pytest.raises(InputError, match="unknown token format"):
        write_tokens(TokenStream([[1]]), str(tmp_path / "x"), fmt="xml")


# --- spans ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("v", [AROM, COMPACT], ids=["ar-omni", "compact"])
def test_split_segments(v):
    t = v.text_start
    segs = split_segments(mixed(v), v)
    assert [s.kind for s in segs] == ["special", "text", "image", "text", "audio", "special"]
    assert segs[1].ids == [t + 1, t + 2]
    assert segs[2].codes(v) == [0, 1, 2, v.image_codes - 1]
    assert segs[4].codes(v) == [5, 6, v.audio_codes - 1]
    assert segs[5].ids == [v.eoh, v.eom]
    with pytest.raises(ValueError):
        segs[1].codes(v)
    # bare audio ids are speech, as in the reference chat parser
    segs = split_segments([t, v.audio_id(1), v.audio_id(2), t], v)
    assert [s.kind for s in segs] == ["text", "audio", "text"] and segs[1].codes(v) == [1, 2]
    # empty spans
    segs = split_segments([v.boi, v.eoi, v.boa, v.eoa], v)
    assert [(s.kind, s.ids) for s in segs] == [("image", []), ("audio", [])]


@pytest.mark.parametrize("v", [AROM, COMPACT], ids=["ar-omni", "compact"])
def test_span_errors(v):
    t = v.text_start
    cases = [
        ([t, v.vocab_size], rf"token {v.vocab_size} at position 1 is outside the vocabulary"),
        ([-1], r"token -1 at position 0 is outside the vocabulary"),
        ([v.boi, v.image_id(0), v.audio_id(0), v.eoi],
         r"token .* at position 2 is not an image code, inside the image span opened at position 0"),
        ([v.boa, v.audio_id(0), t, v.eoa], r"token .* at position 2 is not an audio code"),
        ([v.boa, v.audio_id(0), v.eoi], r"token .* at position 2 is not an audio code"),
        ([t, v.boi, v.image_id(0)], r"image span opened at position 1 is never closed"),
        ([v.boa, v.audio_id(0)], r"audio span opened at position 0 is never closed"),
        ([t, v.eoi], r"token .* at position 1 closes a span that was never opened"),
        ([v.eoa], r"token .* at position 0 closes a span that was never opened"),
        ([t, v.image_id(3)], r"image code .* at position 1 outside an image span"),
    ]
    for ids, msg in cases:
        with pytest.raises(InputError, match=r"^x\.npy: " + msg):
            split_segments(ids, v, "x.npy")
        with pytest.raises(InputError):
            validate(ids, v, "x.npy")


@pytest.mark.parametrize("v", [AROM, COMPACT], ids=["ar-omni", "compact"])
def test_tolerant_mode_never_raises_and_keeps_what_it_can(v):
    t, i0, a0 = v.text_start, v.image_id(0), v.audio_id(0)
    cases = [  # (ids, kinds and ids of the segments)
        ([t, v.vocab_size, -1, t + 1], [("text", [t, t + 1])]),  # ids outside the vocabulary dropped
        ([v.boi, i0, a0, v.eoi], [("image", [i0]), ("audio", [a0]), ("special", [v.eoi])]),  # span ends at a0
        ([v.boa, a0, t, v.eoa], [("audio", [a0]), ("text", [t]), ("special", [v.eoa])]),
        ([t, v.boi, i0], [("text", [t]), ("image", [i0])]),  # never closed: kept
        ([t, v.eoi], [("text", [t]), ("special", [v.eoi])]),  # a stray close marker is a special token
        ([t, v.image_id(3), t], [("text", [t, t])]),  # an image code outside a span dropped
    ]
    for ids, want in cases:
        assert [(s.kind, s.ids) for s in split_segments(ids, v, tolerant=True)] == want, ids
    # a valid stream splits the same either way
    assert split_segments(mixed(v), v, tolerant=True) == split_segments(mixed(v), v)


@pytest.mark.parametrize("v", [AROM, COMPACT], ids=["ar-omni", "compact"])
def test_parse_response(v):
    t = v.text_start
    ids = ([v.ins, t, t + 1, v.res, t + 2] + image_block([1, 2], v) + [v.boi, v.eoi]
           + audio_block([3], v) + [v.audio_id(4), v.image_id(9), t + 3, v.eom, t + 4] + audio_block([5], v))
    assert parse_response(ids, v) == {"text": [t + 2, t + 3], "transcript": [t, t + 1], "images": [[1, 2]],
                                      "speech": [[3], [4]]}
    assert cut_at_stop(ids, v) == ids[: ids.index(v.eom)] and cut_at_stop([t], v) == [t]
    assert parse_response([v.boi, v.image_id(1)], v)["images"] == [[1]]  # cut off mid-image
    assert parse_response([v.eos, t], v) == {"text": [], "transcript": [], "images": [], "speech": []}


def test_open_end_allowed_while_generating():
    v = AROM
    segs = split_segments([v.bos, v.boa, v.audio_id(1), v.audio_id(2)], v, allow_open_end=True)
    assert segs[-1] == Segment("audio", [v.audio_id(1), v.audio_id(2)])


def test_blocks():
    v = AROM
    assert image_block([0, 53], v) == [8197, 4, 57, 8196]
    assert audio_block(np.array([0, 4095]), v) == [12821, 8724, 12819, 12820]


def test_layout_travels_with_file_and_is_checked(tmp_path):
    p = str(tmp_path / "t.npy")
    write_tokens(TokenStream([mixed(COMPACT)], COMPACT.fingerprint), p)
    s = read_tokens(p)
    COMPACT.check_compatible(s.layout, p)
    with pytest.raises(InputError, match="re-tokenize"):
        AROM.check_compatible(s.layout, p)
    # JSON with a layout keeps it too
    p = str(tmp_path / "t.json")
    write_tokens(TokenStream([[1, 2]], COMPACT.fingerprint), p)
    assert json.load(open(p))["layout"] == COMPACT.fingerprint
