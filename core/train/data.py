"""Training data: sources, a seeded streaming shuffle split across ranks, batching/packing, and .npy shards.

Sources (``data.train`` / ``data.heldout`` entries, ``{type: ..., path: ...}``):
- ``shards``: aromni's pre-tokenised shards (``kind: pretokenize``): ``index.json`` + per shard
  ``NAME.npy`` (int32 tokens, concatenated) and ``NAME.idx.npy`` (offset, length, task id, response_len);
  memory-mapped, so nothing is loaded up front.
- ``pretrain_jsonl``: AR-Omni pretraining shards: ``*.jsonl`` in sorted filename order,
  lines ``{"discrete_code": [...], "task": str, "response": [...]}``; keeps ``0 < len < 1300``.
- ``parquet``: AR-Omni-Instruct: ``input_ids`` and ``labels`` (-100 = masked) list columns.
- ``manifest``: a corpus manifest (brief schema), tokenised on the fly with the model's tokenizers.

Order and ranks: all sources are read in order as one global stream, shuffled through a seeded buffer
(seed, epoch), and global sample i goes to rank ``i % world``. A rank's position is ``(epoch, k)``: its
k-th sample of that epoch. Resuming re-reads the stream up to there without tokenising anything.
"""
from __future__ import annotations

import functools
import glob
import json
import os
import random
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

import numpy as np
import torch

from ..errors import AromniError, CheckpointError, InputError
from .losses import IGNORE

SHARD_INDEX = "index.json"
SHARD_FORMAT = "aromni-shards"
IDX_DTYPE = np.dtype([("offset", "<i8"), ("length", "<i4"), ("task", "<i2"), ("response_len", "<i4")])
PRETRAIN_MAX_LEN = 1299  # reference: 0 < len(discrete_code) < 1300
MAX_RESPONSE_LEN = 2047  # reference packs response_len into labels[0] below 2048


@dataclass
class Sample:
    ids: np.ndarray  # int64 [L]
    task: str = "text"
    response_len: int = 0
    labels: np.ndarray | None = None  # int64 [L], -100 = not a target; None: the ids (pretraining)


@dataclass
class Record:
    """A sample before it is read: ``length`` when known without reading (for the length filter)."""

    length: int | None
    load: Callable[[], Sample | None]
    bounds: tuple[int, int | None] = (1, None)  # (min_len, max_len) of its source, set by the stream


def _loaded(s: Sample) -> Callable[[], Sample]:
    """The loader of a sample that is already in memory."""
    return lambda: s


# ----------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------
def _files(path: str, pattern: str, what: str) -> list[str]:
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, pattern)))
    elif any(c in path for c in "*?["):
        files = sorted(glob.glob(path))
    elif os.path.isfile(path):
        files = [path]
    else:
        raise InputError(f"no such {what} file or directory", path)
    if not files:
        raise InputError(f"no {pattern} files", path)
    return files


class ShardSource:
    """Pre-tokenised .npy shards (memory-mapped)."""

    def __init__(self, path: str, **opts):
        self.path = path
        try:
            with open(os.path.join(path, SHARD_INDEX)) as f:
                self.index = json.load(f)
        except OSError:
            raise InputError(f"not a shard directory (no {SHARD_INDEX}; write one with kind: pretokenize)",
                             path) from None
        except json.JSONDecodeError as e:
            raise InputError(f"{SHARD_INDEX} is not valid JSON ({e})", path) from None
        if self.index.get("format") != SHARD_FORMAT:
            raise InputError(f"{SHARD_INDEX} is not an aromni shard index", path)
        self.tasks = list(self.index.get("tasks", []))
        self.layout = self.index.get("layout")
        self.min_len, self.max_len = opts.get("min_len"), opts.get("max_len")

    def records(self) -> Iterator[Record]:
        for sh in self.index["shards"]:
            base = os.path.join(self.path, sh["name"])
            try:
                idx = np.load(base + ".idx.npy", allow_pickle=False)
                toks = np.load(base + ".npy", mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as e:
                raise InputError(f"unreadable shard ({e})", base + ".npy") from None
            for r in idx:
                yield Record(int(r["length"]), self._loader(toks, r))

    def _loader(self, toks, r):
        off, n, task, rl = int(r["offset"]), int(r["length"]), int(r["task"]), int(r["response_len"])
        return lambda: Sample(np.asarray(toks[off: off + n], dtype=np.int64), self.tasks[task], rl)


class PretrainJsonlSource:
    """AR-Omni pretraining shards: sorted ``*.jsonl``, ``discrete_code`` / ``task`` / ``response``."""

    def __init__(self, path: str, **opts):
        self.files = _files(path, "*.jsonl", "pretraining shard")
        self.min_len = opts.get("min_len", 1)
        self.max_len = opts.get("max_len", PRETRAIN_MAX_LEN)

    def records(self) -> Iterator[Record]:
        for fn in self.files:
            with open(fn, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    s = self._parse(line, f"{fn}:{lineno}")
                    yield Record(len(s.ids), _loaded(s))

    @staticmethod
    def _parse(line: str, where: str) -> Sample:
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"not a JSON line ({e.msg})", where) from None
        if not isinstance(d, dict) or "discrete_code" not in d or "task" not in d:
            raise InputError("a pretraining line needs 'discrete_code' and 'task'", where)
        try:
            ids = np.asarray(d["discrete_code"], dtype=np.int64)
        except (TypeError, ValueError):
            raise InputError("'discrete_code' must be a list of integers", where) from None
        if ids.ndim != 1:
            raise InputError("'discrete_code' must be a flat list of integers", where)
        rl = len(d.get("response") or [])
        if rl > MAX_RESPONSE_LEN:
            raise InputError(f"response of {rl} tokens (the reference allows < 2048)", where)
        return Sample(ids, str(d["task"]), rl)


class ParquetSource:
    """AR-Omni-Instruct parquet: ``input_ids`` and ``labels`` (an optional ``task`` column is used)."""

    def __init__(self, path: str, **opts):
        try:
            import pyarrow.parquet as pq  # noqa: F401
        except ImportError:
            raise AromniError("reading parquet needs pyarrow (pip install 'aromni[data]')") from None
        self.files = _files(path, "*.parquet", "parquet")
        self.task = opts.get("task", "sft")
        self.min_len, self.max_len = opts.get("min_len"), opts.get("max_len")

    def records(self) -> Iterator[Record]:
        import pyarrow.parquet as pq

        for fn in self.files:
            try:
                pf = pq.ParquetFile(fn)
            except Exception as e:  # pyarrow raises ArrowInvalid / OSError
                raise InputError(f"not a readable parquet file ({e})", fn) from None
            names = set(pf.schema_arrow.names)
            missing = {"input_ids", "labels"} - names
            if missing:
                raise InputError(f"parquet lacks column(s) {sorted(missing)} (needs input_ids and labels)", fn)
            cols = ["input_ids", "labels"] + (["task"] if "task" in names else [])
            for batch in pf.iter_batches(batch_size=256, columns=cols):
                ids_off, ids_val = _list_arrays(batch.column("input_ids"))
                lab_off, lab_val = _list_arrays(batch.column("labels"))
                tasks = batch.column("task").to_pylist() if "task" in cols else None
                for i in range(batch.num_rows):
                    a, b = ids_off[i], ids_off[i + 1]
                    ids = ids_val[a:b].astype(np.int64)
                    lab = lab_val[lab_off[i]: lab_off[i + 1]].astype(np.int64)
                    if len(lab) != len(ids):
                        raise InputError(f"row {i}: labels has {len(lab)} entries, input_ids {len(ids)}", fn)
                    s = Sample(ids, str(tasks[i]) if tasks else self.task, 0, lab)
                    yield Record(len(ids), _loaded(s))


def _list_arrays(col) -> tuple[np.ndarray, np.ndarray]:
    """(offsets [n+1], flat values) of a pyarrow list column."""
    import pyarrow as pa

    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    off = col.offsets.to_numpy()
    vals = col.values.to_numpy(zero_copy_only=False)
    base = off[0]
    return off - base, vals[base:]


class ManifestSource:
    """A corpus manifest, tokenised on the fly by ``builder(record, base_dir, where) -> Sample``."""

    def __init__(self, path: str, builder=None, split: str | None = "train", **opts):
        if not os.path.isfile(path):
            raise InputError("no such manifest", path)
        if builder is None:
            raise AromniError(f"{path}: a manifest source needs tokenizers (set model.base or model.tokenizers), "
                              f"or pre-tokenise it with kind: pretokenize")
        self.path, self.builder, self.split = path, builder, split
        self.base = os.path.dirname(os.path.abspath(path))
        self.min_len, self.max_len = opts.get("min_len"), opts.get("max_len")

    def rows(self) -> Iterator[tuple[dict, str]]:
        with open(self.path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{self.path}:{lineno}"
                try:
                    d = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"not a JSON line ({e.msg})", where) from None
                if not isinstance(d, dict):
                    raise InputError("a manifest line must be a JSON object", where)
                # a record without a split belongs to the list (train / heldout) that names its manifest
                if self.split is not None and d.get("split", self.split) != self.split:
                    continue
                yield d, where

    def records(self) -> Iterator[Record]:
        for d, where in self.rows():
            yield Record(None, functools.partial(self.builder, d, self.base, where))


SOURCES = {"shards": ShardSource, "pretrain_jsonl": PretrainJsonlSource, "parquet": ParquetSource,
           "manifest": ManifestSource}


def make_source(spec, builder=None, default_split: str = "train"):
    """A source from its config entry (a mapping with ``type`` and ``path``; a bare string is a shard dir)."""
    if isinstance(spec, str):
        spec = {"type": "shards", "path": spec}
    if not isinstance(spec, dict) or "path" not in spec:
        raise AromniError(f"config: a data source needs 'type' and 'path' (got {spec!r})")
    spec = dict(spec)
    kind = spec.pop("type", "shards")
    if kind not in SOURCES:
        raise AromniError(f"config: unknown data source type {kind!r} (known: {', '.join(SOURCES)})")
    path = spec.pop("path")
    if kind == "manifest":
        spec.setdefault("split", default_split)
        return ManifestSource(path, builder=builder, **spec)
    return SOURCES[kind](path, **spec)


# ----------------------------------------------------------------------------------------------
# The stream: global order, buffer shuffle, rank split, resumable position
# ----------------------------------------------------------------------------------------------
T = TypeVar("T")


def buffer_shuffle(items: Iterator[T], size: int, rng: random.Random) -> Iterator[T]:
    """Streaming shuffle through a buffer of ``size`` items (size <= 1: unchanged order)."""
    if size <= 1:
        yield from items
        return
    buf: list[T] = []
    for it in items:
        if len(buf) < size:
            buf.append(it)
            continue
        j = rng.randrange(size)
        yield buf[j]
        buf[j] = it
    rng.shuffle(buf)
    yield from buf


class SampleStream:
    """This rank's samples, epoch after epoch, as ``((epoch, k), Sample)``."""

    def __init__(self, sources: list, *, rank: int = 0, world: int = 1, shuffle_buffer: int = 0, seed: int = 0,
                 min_len: int = 1, max_len: int | None = None, repeat: bool = True, name: str = "training"):
        self.sources, self.rank, self.world = sources, rank, world
        self.shuffle_buffer, self.seed, self.repeat, self.name = shuffle_buffer, seed, repeat, name
        self.min_len, self.max_len = min_len, max_len

    def _bounds(self, src) -> tuple[int, int | None]:
        lo = src.min_len if getattr(src, "min_len", None) is not None else self.min_len
        hi = src.max_len if getattr(src, "max_len", None) is not None else self.max_len
        if self.max_len is not None:
            hi = min(hi, self.max_len) if hi is not None else self.max_len  # never beyond the model's limit
        return max(lo, 1), hi

    def _global(self) -> Iterator[Record]:
        for src in self.sources:
            lo, hi = self._bounds(src)
            for rec in src.records():
                if rec.length is None or (rec.length >= lo and (hi is None or rec.length <= hi)):
                    rec.bounds = (lo, hi)
                    yield rec

    def iter_from(self, pos: tuple[int, int] = (0, 0)) -> Iterator[tuple[tuple[int, int], Sample]]:
        epoch, start = pos
        while True:
            rng = random.Random(self.seed * 1_000_003 + epoch)
            k, got = 0, False
            for gi, rec in enumerate(buffer_shuffle(self._global(), self.shuffle_buffer, rng)):
                if gi % self.world != self.rank:
                    continue
                if k >= start:
                    s = rec.load()
                    lo, hi = rec.bounds
                    if s is not None and lo <= len(s.ids) and (hi is None or len(s.ids) <= hi):
                        got = True
                        yield (epoch, k), s
                k += 1
            if not self.repeat:
                return
            if start == 0 and not got:
                raise AromniError(f"no {self.name} samples for rank {self.rank} of {self.world} (all sources empty or "
                                  f"every sample outside the length limits {self.min_len}..{self.max_len})")
            epoch, start = epoch + 1, 0


def reshard_positions(positions: list, world: int) -> list[tuple[int, int]]:
    """Stream positions for ``world`` ranks that continue exactly where ranks at ``positions`` stopped.

    Global sample i goes to rank ``i % world``: when every old rank stopped at the same ``(epoch, k)``, the
    first ``k * old_world`` samples of the epoch are consumed, and each new rank resumes at
    ``k * old_world / world`` (which must be whole).
    """
    positions = [tuple(p) for p in positions]
    if len(positions) == world:
        return positions
    if len(set(positions)) != 1:
        raise CheckpointError(f"the checkpoint's {len(positions)} ranks stopped at different data positions "
                              f"{sorted(set(positions))[:4]} (packing or an epoch boundary): resume it on "
                              f"{len(positions)} ranks")
    epoch, k = positions[0]
    consumed = k * len(positions)
    if consumed % world:
        raise CheckpointError(f"{consumed} samples of epoch {epoch} were consumed, which {world} ranks cannot "
                              f"split evenly: resume on a world size that divides {consumed}")
    return [(epoch, consumed // world)] * world


# ----------------------------------------------------------------------------------------------
# Per-sample preparation, batching and packing
# ----------------------------------------------------------------------------------------------
@dataclass
class Item:
    ids: np.ndarray  # int64 [L]
    labels: np.ndarray  # int64 [L] (-100 = none)
    weights: np.ndarray  # float32 [L], weight of token t as a target
    image: np.ndarray  # bool [L], perceptual-loss positions


@dataclass
class Batch:
    tokens: torch.Tensor  # [B, T] int64
    targets: torch.Tensor  # [B, T] target of the prediction at t (labels shifted by one)
    weights: torch.Tensor  # [B, T] float32 weight of the prediction at t
    image: torch.Tensor  # [B, T] bool: hidden state at t enters the perceptual loss
    positions: torch.Tensor | None = None  # [B, T] (packed rows)
    attn_mask: torch.Tensor | None = None  # [B, 1, T, T] bool (packed rows)
    n_tokens: int = 0  # real (non-pad) tokens
    n_samples: int = 0

    def to(self, device) -> "Batch":
        def mv(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=True)

        return Batch(mv(self.tokens), mv(self.targets), mv(self.weights), mv(self.image),
                     None if self.positions is None else mv(self.positions),
                     None if self.attn_mask is None else mv(self.attn_mask), self.n_tokens, self.n_samples)


def collate(rows: list[list[Item]], pad_id: int, packed: bool) -> Batch:
    B = len(rows)
    T = max(sum(len(it.ids) for it in row) for row in rows)
    tokens = np.full((B, T), pad_id, dtype=np.int64)
    labels = np.full((B, T), IGNORE, dtype=np.int64)
    w = np.zeros((B, T), dtype=np.float32)
    img = np.zeros((B, T), dtype=bool)
    seg = np.full((B, T), -1, dtype=np.int64)
    pos = np.tile(np.arange(T, dtype=np.int64), (B, 1))
    n = 0
    for b, row in enumerate(rows):
        off = 0
        for j, it in enumerate(row):
            L = len(it.ids)
            sl = slice(off, off + L)
            tokens[b, sl], labels[b, sl], w[b, sl], img[b, sl] = it.ids, it.labels, it.weights, it.image
            seg[b, sl], pos[b, sl] = j, np.arange(L)
            off += L
            n += L
        pos[b, off:] = np.arange(T - off)
    targets = np.full((B, T), IGNORE, dtype=np.int64)
    weights = np.zeros((B, T), dtype=np.float32)
    targets[:, :-1], weights[:, :-1] = labels[:, 1:], w[:, 1:]  # position 0 of every sample has weight 0
    batch = Batch(torch.from_numpy(tokens), torch.from_numpy(targets), torch.from_numpy(weights),
                  torch.from_numpy(img), n_tokens=n, n_samples=sum(len(r) for r in rows))
    if packed:
        s = torch.from_numpy(seg)
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        batch.attn_mask = ((s[:, :, None] == s[:, None, :]) & causal).unsqueeze(1)
        batch.positions = torch.from_numpy(pos)
    return batch


class Batcher:
    """Micro-batches from a SampleStream; ``pos`` is the stream position of the first unbatched sample."""

    def __init__(self, stream: SampleStream, prepare: Callable[[Sample], Item], batch_size: int, pad_id: int,
                 pack: bool = False, seq_len: int | None = None):
        if pack and not seq_len:
            raise AromniError("packing needs data.seq_len (or a model max_seq_len)")
        self.stream, self.prepare, self.B, self.pad_id = stream, prepare, batch_size, pad_id
        self.pack, self.seq_len = pack, seq_len
        self.pos: tuple[int, int] = (0, 0)
        self._gen: Iterator[Batch] | None = None

    def reset(self, pos: tuple[int, int] = (0, 0)) -> None:
        epoch, k = pos  # may come as a list (checkpoint JSON)
        self.pos, self._gen = (epoch, k), None

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        if self._gen is None:
            self._gen = self._batches()
        return next(self._gen)

    def _batches(self) -> Iterator[Batch]:
        it = self.stream.iter_from(self.pos)
        held = None
        while True:
            rows: list[list[Item]] = []
            if not self.pack:
                for _ in range(self.B):
                    try:
                        p, s = next(it)
                    except StopIteration:
                        break
                    rows.append([self.prepare(s)])
                    self.pos = (p[0], p[1] + 1)
                if not rows:
                    return
                yield collate(rows, self.pad_id, packed=False)
                continue
            assert self.seq_len is not None  # __init__: packing needs seq_len
            used: list[int] = []
            while True:
                if held is None:
                    try:
                        p, s = next(it)
                    except StopIteration:
                        break
                    held = (p, self.prepare(s))
                p, item = held
                n = len(item.ids)
                if used and used[-1] + n <= self.seq_len:
                    rows[-1].append(item)
                    used[-1] += n
                elif len(rows) < self.B:
                    rows.append([item])
                    used.append(n)
                else:
                    break
                held = None
                self.pos = (p[0], p[1] + 1)
            if held is not None:
                self.pos = held[0]
            if not rows:
                return
            yield collate(rows, self.pad_id, packed=True)


# ----------------------------------------------------------------------------------------------
# Shards (pre-tokenise)
# ----------------------------------------------------------------------------------------------
class ShardWriter:
    """Writes samples to ``out_dir`` as .npy shards plus ``index.json`` (atomically, at ``close``)."""

    def __init__(self, out_dir: str, shard_size: int = 10000, layout: str | None = None):
        self.out_dir, self.shard_size, self.layout = out_dir, shard_size, layout
        os.makedirs(out_dir, exist_ok=True)
        self.tasks: list[str] = []
        self.shards: list[dict] = []
        self._toks: list[np.ndarray] = []
        self._rows: list[tuple] = []
        self.samples = self.tokens = 0

    def add(self, s: Sample) -> None:
        if s.task not in self.tasks:
            self.tasks.append(s.task)
        off = sum(len(t) for t in self._toks)
        self._toks.append(np.asarray(s.ids, dtype=np.int32))
        self._rows.append((off, len(s.ids), self.tasks.index(s.task), s.response_len))
        self.samples += 1
        self.tokens += len(s.ids)
        if len(self._rows) >= self.shard_size:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        name = f"shard-{len(self.shards):05d}"
        base = os.path.join(self.out_dir, name)
        np.save(base + ".npy", np.concatenate(self._toks))
        np.save(base + ".idx.npy", np.array(self._rows, dtype=IDX_DTYPE))
        self.shards.append({"name": name, "samples": len(self._rows), "tokens": int(sum(len(t) for t in self._toks))})
        self._toks, self._rows = [], []

    def close(self) -> dict:
        self._flush()
        index = {"format": SHARD_FORMAT, "version": 1, "layout": self.layout, "tasks": self.tasks,
                 "samples": self.samples, "tokens": self.tokens, "shards": self.shards}
        tmp = os.path.join(self.out_dir, SHARD_INDEX + ".tmp")
        with open(tmp, "w") as f:
            json.dump(index, f, indent=1)
        os.replace(tmp, os.path.join(self.out_dir, SHARD_INDEX))
        return index
