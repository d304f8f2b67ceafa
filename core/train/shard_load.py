"""A base checkpoint read lazily, row range by row range, in aromni's key names and layout.

Every layout the loaders read is supported: a native bundle and transformers safetensors shards through
safetensors' lazy slices (``safe_open(...).get_slice``: only the requested rows are read), pickled files
(transformers ``.bin``, Meta ``consolidated*.pth`` incl. model-parallel shards) through a memory map (only the
pages of the requested rows are touched). Key names and layout conversions are those of ``core/convert.py``.

``fill_shards`` copies into each parameter exactly the rows a rank owns (FSDP2 shards dim 0), so that a model
built on the meta device and sharded by ``fully_shard`` is loaded without any rank holding the whole model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

from .. import convert
from ..errors import CheckpointError
from ..loading import Checkpoint, detect, torch_load
from ..model import ModelConfig


class _Part:
    """One stored tensor: its shape and a reader of rows [a, b) (a safetensors slice or a mapped tensor)."""

    def __init__(self, obj):
        self.obj = obj
        self.shape = tuple(obj.get_shape()) if hasattr(obj, "get_shape") else tuple(obj.shape)

    def rows(self, a: int, b: int) -> torch.Tensor:
        if not self.shape:
            return self.obj[...] if hasattr(self.obj, "get_shape") else self.obj
        return self.obj[a:b]

    def full(self) -> torch.Tensor:
        return self.rows(0, self.shape[0] if self.shape else 0)


@dataclass
class LazyState:
    """aromni key -> (shape, reader of rows [a, b) in aromni layout)."""

    cfg: ModelConfig
    shapes: dict[str, tuple] = field(default_factory=dict)
    readers: dict[str, Callable[[int, int], torch.Tensor]] = field(default_factory=dict)
    format: str = "aromni"
    _keep: list = field(default_factory=list)  # open files

    def rows(self, key: str, a: int, b: int) -> torch.Tensor:
        return self.readers[key](a, b)

    def full(self, key: str) -> torch.Tensor:
        return self.readers[key](0, self.shapes[key][0] if self.shapes[key] else 0)

    def add(self, key: str, shape: tuple, reader: Callable[[int, int], torch.Tensor]) -> None:
        self.shapes[key], self.readers[key] = tuple(shape), reader

    def add_full(self, key: str, t: torch.Tensor) -> None:
        self.add(key, tuple(t.shape), lambda a, b: t[a:b] if t.dim() else t)


def _safetensor_parts(files: list[str], keep: list) -> dict[str, _Part]:
    from safetensors import safe_open

    parts = {}
    for fn in files:
        try:
            f = safe_open(fn, framework="pt")
        except FileNotFoundError:
            raise CheckpointError(f"{fn}: no such file") from None
        except Exception as e:  # SafetensorError: truncated / bad header
            raise CheckpointError(f"{fn}: unreadable safetensors file ({str(e).splitlines()[0]})") from None
        keep.append(f)
        for k in f.keys():
            parts[k] = _Part(f.get_slice(k))
    return parts


def _pickle_parts(files: list[str]) -> dict[str, _Part]:
    parts = {}
    for fn in files:
        parts.update({k: _Part(v) for k, v in torch_load(fn).items()})
    return parts


def _parts(ck: Checkpoint, keep: list) -> dict[str, _Part]:
    if all(f.endswith(".safetensors") for f in ck.files):
        return _safetensor_parts(ck.files, keep)
    return _pickle_parts(ck.files)


def _interleaved_rows(part: _Part, heads_hd: int) -> Callable[[int, int], torch.Tensor]:
    """Rows [a, b) of a transformers (half-split RoPE order) q/k weight in aromni's interleaved order: the
    permutation stays inside a head, so whole heads around [a, b) are read and reordered."""
    def read(a: int, b: int) -> torch.Tensor:
        if b <= a:
            return part.rows(0, 0)
        h0, h1 = a // heads_hd, -(-b // heads_hd)
        block = part.rows(h0 * heads_hd, h1 * heads_hd)
        return convert.to_interleaved(block, h1 - h0, heads_hd)[a - h0 * heads_hd: b - h0 * heads_hd]
    return read


def _open_hf(ck: Checkpoint, lazy_keep: list) -> LazyState:
    parts = _parts(ck, lazy_keep)
    qn = next((p for k, p in parts.items() if k.endswith("self_attn.q_norm.weight")), None)
    if qn is not None:
        fmt = "hf" if len(qn.shape) == 2 else "hf-dev"
    else:
        fmt = "hf-dev" if ("qk_layernorm" in ck.config
                           or "ChameleonForCausalLM" in (ck.config.get("architectures") or [])) else "hf"
    cfg = convert.config_from_hf(ck.config, fmt)
    src = {k: p for k, p in parts.items() if not k.startswith(convert.VQ_PREFIX)}
    convert.check_state({k: torch.empty(p.shape, device="meta") for k, p in src.items()},
                        convert.expected_shapes(fmt, cfg), ck.model_dir)
    lazy = LazyState(cfg, format=fmt, _keep=lazy_keep)
    norms = {}
    for k, p in src.items():
        name = convert.rename(k, fmt, to_aromni=True)
        if name is None:
            raise CheckpointError(f"{ck.model_dir}: unexpected key {k}")
        if ".q_norm." in name or ".k_norm." in name:  # small: converted whole
            norms[name] = convert.to_aromni({k: p.full()}, fmt, cfg)[0][name]
        elif fmt == "hf" and name.endswith(("attention.wq.weight", "attention.wk.weight")):
            lazy.add(name, p.shape, _interleaved_rows(p, cfg.head_dim))
        else:
            lazy.add(name, p.shape, p.rows)
    return _with_norms(lazy, norms)


def _with_norms(lazy: LazyState, norms: dict) -> LazyState:
    norms, lazy.cfg = convert.collapse_qk_norms(norms, lazy.cfg) if norms else (norms, lazy.cfg)
    for k, v in norms.items():
        lazy.add_full(k, v)
    return lazy


def _meta_split_dim(shard_shape: tuple, full_shape: tuple, n: int) -> int | None:
    """Which dim model-parallel shards split (None: replicated), from the shard and the merged shapes."""
    for d, (s, f) in enumerate(zip(shard_shape, full_shape)):
        if s != f and s * n == f:
            return d
    return None


def _concat_rows(parts: list[_Part], dim: int) -> Callable[[int, int], torch.Tensor]:
    """Rows [a, b) of the concatenation of ``parts`` along ``dim`` (0: rows come from the parts in turn)."""
    def read(a: int, b: int) -> torch.Tensor:
        if dim == 1:
            return torch.cat([p.rows(a, b) for p in parts], dim=1)
        out, off = [], 0
        for p in parts:
            n = p.shape[0]
            lo, hi = max(a, off), min(b, off + n)
            if lo < hi:
                out.append(p.rows(lo - off, hi - off))
            off += n
        return torch.cat(out, dim=0) if len(out) != 1 else out[0]
    return read


def _open_meta(ck: Checkpoint) -> LazyState:
    p = ck.config
    n_declared = int(p.get("model_parallel_size") or 1)
    if len(ck.files) == 1 and ck.files[0].endswith("consolidated.pth"):
        n_declared = 1
    if len(ck.files) != n_declared and n_declared > 1:
        raise CheckpointError(f"{ck.model_dir}: model_parallel_size is {n_declared} but {len(ck.files)} "
                              "consolidated.NN.pth shards were found")
    shards = [torch_load(f) for f in ck.files]  # memory-mapped: nothing is read until a slice is copied
    n = len(shards)
    emb = shards[0].get("tok_embeddings.weight")
    cfg = convert.config_from_meta(p, vocab_size=int(emb.shape[0]) if emb is not None else None)
    shards = [convert.unfuse_meta(s, cfg, n) for s in shards]  # splits are views
    merged_cfg = cfg
    if n > 1:
        from dataclasses import replace

        merged_cfg = replace(cfg, qk_norm_per_head=True) if cfg.qk_norm else cfg
    full = convert.expected_shapes("meta", merged_cfg)
    keys = [k for k in shards[0] if k != convert.ROPE_KEY]
    if n == 1:  # model-parallel shards are checked against the model when filled
        convert.check_state({k: torch.empty(v.shape, device="meta") for k, v in shards[0].items()}, full,
                            ck.files[0], optional=(convert.ROPE_KEY,))
    lazy = LazyState(merged_cfg, format="meta")
    norms = {}
    for k in keys:
        name = convert.rename(k, "meta", to_aromni=True)
        assert name is not None  # every Meta key has an aromni name
        if k not in full:
            raise CheckpointError(f"{ck.model_dir}: unexpected key {k}")
        parts = [_Part(s[k]) for s in shards]
        if n == 1:
            lazy.add(name, parts[0].shape, parts[0].rows)
            continue
        if "_normalization." in k:  # each shard's norm serves its heads: one row per head
            heads = (cfg.n_heads if ".q_normalization." in k else cfg.n_kv_heads) // n
            norms[name] = torch.stack([q.full() for q in parts]).repeat_interleave(heads, dim=0)
            continue
        d = _meta_split_dim(parts[0].shape, full[k], n)
        if d is None:  # replicated (RMSNorm weights): averaged, as the full loader does
            lazy.add_full(name, torch.stack([q.full() for q in parts]).float().mean(0).to(parts[0].full().dtype))
        else:
            lazy.add(name, full[k], _concat_rows(parts, d))
    return _with_norms(lazy, norms)


def open_lazy(path: str) -> LazyState:
    """The checkpoint at ``path`` (any supported layout) as a :class:`LazyState`; nothing is read yet."""
    from .. import hub

    ck = detect(hub.resolve(path))
    keep: list = []
    if ck.format == "aromni":
        cfg = ModelConfig.from_dict(ck.config["model"])
        lazy = LazyState(cfg, format="aromni", _keep=keep)
        parts = _safetensor_parts(ck.files, keep)
        convert.check_state({k: torch.empty(p.shape, device="meta") for k, p in parts.items()},
                            convert.expected_shapes("aromni", cfg), ck.files[0])
        for k, p in parts.items():
            lazy.add(k, p.shape, p.rows)
        return lazy
    if ck.format == "meta":
        return _open_meta(ck)
    return _open_hf(ck, keep)


# ----------------------------------------------------------------------------------------------
# Filling FSDP2 shards
# ----------------------------------------------------------------------------------------------
def local_rows(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(this rank's local tensor, its first global row) of a dim-0-sharded DTensor (or a plain tensor, row 0)."""
    from torch.distributed.tensor import DTensor

    if not isinstance(t, DTensor):
        return t, 0
    mesh = t.device_mesh
    world, rank = mesh.size(), mesh.get_local_rank()
    local = t.to_local()
    n = t.shape[0]
    chunk = -(-n // world)  # FSDP2 (and DTensor Shard(0)) split like torch.chunk
    start = min(rank * chunk, n)
    if local.shape[0] != max(0, min(n, start + chunk) - start):
        raise RuntimeError(f"unexpected shard of {tuple(t.shape)} on rank {rank}: {tuple(local.shape)}")
    return local, start


@torch.no_grad()
def fill_shards(module: nn.Module, lazy: LazyState, prefix: str = "", source: str = "checkpoint") -> None:
    """Copy into every parameter of ``module`` under ``prefix`` its local rows from ``lazy`` (cast on copy)."""
    names = {n[len(prefix):]: p for n, p in module.named_parameters() if n.startswith(prefix)}
    missing = sorted(set(names) - set(lazy.shapes))
    unexpected = sorted(set(lazy.shapes) - set(names))
    bad = [k for k, p in names.items() if k in lazy.shapes and tuple(p.shape) != lazy.shapes[k]]
    if missing or unexpected or bad:
        raise CheckpointError(f"{source}: does not fit the model config (missing {missing[:3]}, unexpected "
                              f"{unexpected[:3]}, shape mismatches {bad[:3]})")
    for k, p in names.items():
        local, start = local_rows(p)
        part = lazy.rows(k, start, start + local.shape[0])  # called for every key, in order (see random_state)
        if local.numel():
            local.copy_(part)



def random_state(cfg: ModelConfig, seed: int, std: float = 0.02) -> LazyState:
    """The weights ``build_model(cfg, seed=seed)`` draws, generated one tensor at a time.

    Each reader draws its full tensor from one shared generator and must be called once, in parameter order
    (as :func:`fill_shards` does), for the values to equal a plain build's.
    """
    import math

    g = torch.Generator().manual_seed(seed)
    lazy = LazyState(cfg, format="random")
    for name, p in convert.meta_model(cfg).named_parameters():
        shape = tuple(p.shape)
        if p.dim() == 2:
            scale = 1 / math.sqrt(2 * cfg.n_layers) if name.endswith(("wo.weight", "w2.weight")) else 1.0

            def read(a: int, b: int, shape=shape, scale=scale) -> torch.Tensor:
                t = torch.empty(shape).normal_(0.0, std, generator=g)
                return (t.mul_(scale) if scale != 1.0 else t)[a:b]
            lazy.add(name, shape, read)
        else:  # norms: weight 1, bias 0 (the modules' own initial values)
            value = 0.0 if name.endswith(".bias") else 1.0

            def read_fill(a: int, b: int, shape=shape, fill=value) -> torch.Tensor:
                return torch.full(shape, fill)[a:b]
            lazy.add(name, shape, read_fill)
    return lazy
