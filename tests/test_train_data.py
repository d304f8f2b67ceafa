"""Training data: upstream pretraining JSONL and SFT parquet schemas, shards, shuffling, rank split, packing,
resumable positions, and manifest pre-tokenisation through the CLI."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from _train_data import layout, write_upstream_shards
from aromni.core.errors import InputError
from aromni.core.train.config import LossSection
from aromni.core.train.data import (Batcher, Item, ParquetSource, PretrainJsonlSource, Sample, SampleStream,
                                    ShardSource, ShardWriter, buffer_shuffle, collate)
from aromni.core.train.losses import target_weights

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _samples(src):
    return [r.load() for r in src.records()]


# ----------------------------------------------------------------------------------------------
# upstream formats
# ----------------------------------------------------------------------------------------------
def test_pretrain_jsonl_schema_order_and_length_filter(tmp_path):
    lines = {
        "b.jsonl": [{"discrete_code": [0, 20, 2], "task": "text_to_text", "response": [20]}],
        "a.jsonl": [{"discrete_code": list(range(1299)), "task": "image_caption", "response": [1, 2, 3], "id": "x"},
                    {"discrete_code": list(range(1300)), "task": "image_caption", "response": []},
                    {"discrete_code": [], "task": "speech_to_text", "response": []},
                    {"discrete_code": [0, 5, 6, 2], "task": "speech_to_text", "response": [5, 6]}],
    }
    for name, rows in lines.items():
        with open(tmp_path / name, "w") as f:
            f.write("\n".join(json.dumps(r) for r in rows) + "\n")
    src = PretrainJsonlSource(str(tmp_path))
    got = [s for _, s in zip(range(3), SampleStream([src], repeat=False).iter_from())]
    # sorted filename order (a before b); 0 < len < 1300
    assert [len(s.ids) for _, s in got] == [1299, 4, 3]
    assert [s.task for _, s in got] == ["image_caption", "speech_to_text", "text_to_text"]
    assert [s.response_len for _, s in got] == [3, 2, 1]
    assert got[0][1].labels is None and got[0][1].ids.dtype == np.int64


def test_pretrain_jsonl_errors_name_the_line(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"discrete_code": [0, 1], "task": "text_to_text", "response": []}\nnot json\n')
    with pytest.raises(InputError, match=r"x\.jsonl:2"):
        _samples(PretrainJsonlSource(str(tmp_path)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"no \*\.jsonl files"):
        PretrainJsonlSource(str(tmp_path / "empty"))
    with pytest.raises(InputError, match="no such"):
        PretrainJsonlSource(str(tmp_path / "missing"))


def test_parquet_input_ids_labels(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    ids = [[0, 10, 11, 12, 2], [0, 13, 2]]
    labels = [[-100, -100, 11, 12, 2], [-100, 13, 2]]
    pq.write_table(pa.table({"input_ids": ids, "labels": labels}), tmp_path / "sft-00000.parquet")
    got = _samples(ParquetSource(str(tmp_path)))
    assert [s.ids.tolist() for s in got] == ids
    assert [s.labels.tolist() for s in got] == labels
    assert all(s.task == "sft" for s in got)
    # the labels' -100 become zero weights
    w = target_weights(got[0].ids, got[0].labels, "sft", 0, LossSection(), eos=2, ins=10, res=11)
    assert w.tolist() == [0, 0, 1, 1, 1]
    pq.write_table(pa.table({"input_ids": ids}), tmp_path / "bad.parquet")
    with pytest.raises(InputError, match="labels"):
        _samples(ParquetSource(str(tmp_path / "bad.parquet")))


def test_shards_round_trip(tmp_path):
    w = ShardWriter(str(tmp_path / "sh"), shard_size=3, layout="tiny:abc")
    rng = np.random.default_rng(0)
    want = [Sample(rng.integers(0, 200, size=rng.integers(2, 30)), ["tts", "asr"][i % 2], i) for i in range(7)]
    for s in want:
        w.add(s)
    idx = w.close()
    assert idx["samples"] == 7 and len(idx["shards"]) == 3
    src = ShardSource(str(tmp_path / "sh"))
    got = _samples(src)
    assert [g.ids.tolist() for g in got] == [s.ids.tolist() for s in want]
    assert [(g.task, g.response_len) for g in got] == [(s.task, s.response_len) for s in want]
    assert src.layout == "tiny:abc"


# ----------------------------------------------------------------------------------------------
# order, ranks, positions
# ----------------------------------------------------------------------------------------------
def test_buffer_shuffle_is_a_seeded_permutation():
    a = list(buffer_shuffle(iter(range(100)), 10, random.Random(1)))
    b = list(buffer_shuffle(iter(range(100)), 10, random.Random(1)))
    assert a == b and sorted(a) == list(range(100)) and a != list(range(100))
    assert list(buffer_shuffle(iter(range(5)), 0, random.Random(1))) == list(range(5))


def test_ranks_split_the_global_stream(tmp_path):
    data = write_upstream_shards(str(tmp_path / "up"), n_files=2, per_file=10)
    src = PretrainJsonlSource(data)
    one = [s.ids.tolist() for _, s in SampleStream([src], shuffle_buffer=7, seed=3, repeat=False).iter_from()]
    parts = [[s.ids.tolist() for _, s in SampleStream([src], rank=r, world=2, shuffle_buffer=7, seed=3,
                                                      repeat=False).iter_from()] for r in range(2)]
    assert [x for pair in zip(*parts) for x in pair] == one  # interleaved back = the one-process order
    # another epoch, another order
    st = SampleStream([src], shuffle_buffer=7, seed=3)
    it = st.iter_from()
    first = [next(it)[1].ids.tolist() for _ in range(40)]
    assert first[:20] == one and first[20:] != one and sorted(map(tuple, first[20:])) == sorted(map(tuple, one))


def _prepare(s: Sample) -> Item:
    w = target_weights(s.ids, None, s.task, s.response_len, LossSection(), eos=2, ins=10, res=11)
    return Item(s.ids, s.ids.copy(), w, np.zeros(len(s.ids), dtype=bool))


@pytest.mark.parametrize("pack", [False, True])
def test_batcher_position_resumes_exactly(tmp_path, pack):
    data = write_upstream_shards(str(tmp_path / "up"), n_files=2, per_file=9)
    make = lambda: Batcher(SampleStream([PretrainJsonlSource(data)], shuffle_buffer=5, seed=1), _prepare,  # noqa
                           batch_size=3, pad_id=2, pack=pack, seq_len=64)
    a = make()
    ref = [next(a) for _ in range(9)]  # crosses an epoch boundary
    b = make()
    for _ in range(4):
        next(b)
    pos = b.pos
    c = make()
    c.reset(pos)
    for want in ref[4:]:
        got = next(c)
        assert torch.equal(got.tokens, want.tokens) and torch.equal(got.weights, want.weights)


def test_packed_forward_equals_separate_forwards():
    from aromni.core.model import build_model, get_config

    lay = layout()
    model = build_model(get_config("tiny", vocab_size=lay.vocab_size), seed=0).eval()
    rng = np.random.default_rng(0)
    seqs = [rng.integers(16, 116, size=n) for n in (7, 5, 9)]
    items = [_prepare(Sample(s)) for s in seqs]
    b = collate([items[:2], items[2:]], pad_id=2, packed=True)
    with torch.no_grad():
        packed = model(b.tokens, positions=b.positions, attn_mask=b.attn_mask)
        for row, off, s in [(0, 0, seqs[0]), (0, 7, seqs[1]), (1, 0, seqs[2])]:
            alone = model(torch.from_numpy(s)[None])[0]
            assert torch.allclose(packed[row, off: off + len(s)], alone, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# manifests -> shards (CLI) -> training
# ----------------------------------------------------------------------------------------------
def _manifest(root: str) -> str:
    import soundfile as sf
    from PIL import Image

    os.makedirs(os.path.join(root, "img"), exist_ok=True)
    os.makedirs(os.path.join(root, "wav"), exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(os.path.join(root, "img/a.png"))
    sf.write(os.path.join(root, "wav/a.wav"), (0.1 * rng.standard_normal(4000)).astype(np.float32), 8000)
    recs = [
        {"task": "text", "split": "train", "text": "hello there"},
        {"task": "caption", "split": "train", "text": "a red square", "image": "img/a.png"},
        {"task": "tts", "split": "train", "text": "hi", "audio": "wav/a.wav"},
        {"task": "t2i", "split": "heldout", "text": "a square", "image": "img/a.png"},
        {"task": "chat", "split": "train", "turns": [{"role": "user", "audio": "wav/a.wav", "text": "hi"},
                                                     {"role": "assistant", "text": "hello"}]},
    ]
    path = os.path.join(root, "manifest.jsonl")
    with open(path, "w") as f:
        f.write("\n".join(json.dumps(r) for r in recs) + "\n")
    return path


@pytest.mark.slow
def test_pretokenize_cli_then_train(tmp_path, tiny_bundle):
    import yaml

    from aromni.core.bundle import load_bundle

    man = _manifest(str(tmp_path / "corpus"))
    cfg = {"kind": "pretokenize", "out_dir": str(tmp_path / "tok"),
           "model": {"base": tiny_bundle}, "data": {"train": [{"type": "manifest", "path": man}]}}
    (tmp_path / "tok.yaml").write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "aromni", "train", str(tmp_path / "tok.yaml"), "--json"],
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["splits"]["train"]["samples"] == 4 and out["splits"]["heldout"]["samples"] == 1
    assert "tokenize manifest.jsonl" in r.stderr  # the progress bar

    omni = load_bundle(tiny_bundle)
    v = omni.vocab
    got = _samples(ShardSource(str(tmp_path / "tok" / "train")))
    assert [s.task for s in got] == ["text", "caption", "tts", "chat"]
    text = got[0]
    assert text.ids.tolist() == [v.bos] + omni.text.encode("hello there") + [v.eom]
    cap = got[1]
    assert cap.ids.tolist().count(v.boi) == 1 and sum(v.is_image(t) for t in cap.ids) == v.image_tokens
    assert cap.response_len == len(omni.text.encode("a red square")) + 1
    chat = got[3]
    assert v.ins in chat.ids and v.res in chat.ids and chat.ids[-1] == v.eom
    assert chat.response_len == 1 + len(omni.text.encode("hi")) + 1 + len(omni.text.encode("hello")) + 1

    lm = {"kind": "lm", "out_dir": str(tmp_path / "run"), "model": {"base": tiny_bundle},
          "data": {"train": [str(tmp_path / "tok" / "train")], "heldout": [str(tmp_path / "tok" / "heldout")],
                   "batch_size": 2},
          "loss": {"perceptual_weight": 1.0}, "train": {"max_steps": 2, "device": "cpu", "eval_batches": 1},
          "checkpoint": {"every": 0}}
    (tmp_path / "lm.yaml").write_text(yaml.safe_dump(lm))
    r = subprocess.run([sys.executable, "-m", "aromni", "train", str(tmp_path / "lm.yaml"), "-q"],
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert rows[-1]["step"] == 2 and "pl" in rows[-1] and "val_loss" in rows[-1]
    again = load_bundle(str(tmp_path / "run" / "bundle"))
    assert again.vocab.fingerprint == v.fingerprint and again.image is not None
