"""Checkpoint layouts: key maps, RoPE-order permutations, config translation, Meta shard merging.

Layouts (names used throughout):

- ``aromni``: native bundle keys (Meta names, ``attention.{q,k}_norm``), q/k rows in interleaved-pair order.
- ``meta``:   Meta Chameleon ``consolidated.pth`` (``attention.{q,k}_normalization`` [head_dim], ``rope.freqs``),
  interleaved order; model-parallel shards ``consolidated.NN.pth``.
- ``hf-dev``: the transformers fork AR-Omni trains with: ``model.*``/``lm_head`` keys, q/k NOT permuted,
  qk-norm [head_dim].
- ``hf``:     mainline transformers ``ChameleonForConditionalGeneration``: q/k rows and qk-norm entries permuted to
  half-split (rotate-half) order, qk-norm per head [heads, head_dim] (docs/formats.md, "Checkpoint layouts").

Everything converts through the ``aromni`` layout; conversions are pure functions on state dicts (writing
files in a layout is ``export.py``).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from .errors import CheckpointError
from .model import ModelConfig, Transformer

FORMATS = ("aromni", "meta", "hf-dev", "hf")

# aromni per-layer suffix -> HF suffix (both HF layouts share the names)
_HF_LAYER = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "attention.q_norm.weight": "self_attn.q_norm.weight",
    "attention.q_norm.bias": "self_attn.q_norm.bias",
    "attention.k_norm.weight": "self_attn.k_norm.weight",
    "attention.k_norm.bias": "self_attn.k_norm.bias",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_HF_GLOBAL = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
              "output.weight": "lm_head.weight"}
_META_LAYER = {"attention.q_norm.weight": "attention.q_normalization.weight",
               "attention.q_norm.bias": "attention.q_normalization.bias",
               "attention.k_norm.weight": "attention.k_normalization.weight",
               "attention.k_norm.bias": "attention.k_normalization.bias"}
_INV_HF_LAYER = {v: k for k, v in _HF_LAYER.items()}
_INV_HF_GLOBAL = {v: k for k, v in _HF_GLOBAL.items()}
_INV_META_LAYER = {v: k for k, v in _META_LAYER.items()}
VQ_PREFIX = "model.vqmodel."  # HF keys of the image tokenizer's encoder (routed to the image tokenizer)
ROPE_KEY = "rope.freqs"       # Meta: required by Meta's loader, value ignored


def _split(key: str) -> tuple[int, str] | None:
    """``layers.N.rest`` -> (N, rest)."""
    if not key.startswith("layers."):
        return None
    _, n, rest = key.split(".", 2)
    return int(n), rest


def rename(key: str, fmt: str, to_aromni: bool) -> str | None:
    """Map one key between ``fmt`` and aromni names (None: the key has no counterpart)."""
    if fmt == "aromni":
        return key
    if fmt == "meta":
        sp = _split(key)
        if sp is None:
            return key
        table = _INV_META_LAYER if to_aromni else _META_LAYER
        return f"layers.{sp[0]}.{table.get(sp[1], sp[1])}"
    if to_aromni:
        if key in _INV_HF_GLOBAL:
            return _INV_HF_GLOBAL[key]
        if key.startswith("model.layers."):
            _, _, n, rest = key.split(".", 3)
            return f"layers.{n}.{_INV_HF_LAYER[rest]}" if rest in _INV_HF_LAYER else None
        return None
    if key in _HF_GLOBAL:
        return _HF_GLOBAL[key]
    sp = _split(key)
    return f"model.layers.{sp[0]}.{_HF_LAYER[sp[1]]}" if sp and sp[1] in _HF_LAYER else None


# ----------------------------------------------------------------------------------------------
# RoPE pair order. Meta rotates adjacent pairs (0,1),(2,3)...; transformers rotates (i, i+hd/2). The same
# function results when each head's q/k rows (and the qk-norm entries applied before RoPE) are reordered
# [x0, x1, x2, x3, ...] -> [x0, x2, ..., x1, x3, ...]. LayerNorm statistics over head_dim ignore the order.
# ----------------------------------------------------------------------------------------------
def to_half_split(x: torch.Tensor, n_heads: int, head_dim: int) -> torch.Tensor:
    """Interleaved -> half-split order. x: rows [H*hd, in], per-head norms [H, hd] or a shared norm [hd] (H=1)."""
    return x.reshape(n_heads, head_dim // 2, 2, -1).transpose(1, 2).reshape(x.shape)


def to_interleaved(x: torch.Tensor, n_heads: int, head_dim: int) -> torch.Tensor:
    """Half-split -> interleaved order (inverse of :func:`to_half_split`)."""
    return x.reshape(n_heads, 2, head_dim // 2, -1).transpose(1, 2).reshape(x.shape)


def norm_heads(key: str, cfg: ModelConfig) -> int:
    return cfg.n_heads if ".q_norm." in key else cfg.n_kv_heads


def _shared_norm(t: torch.Tensor, key: str, fmt: str) -> torch.Tensor:
    """[H, hd] -> [hd] when every head has the same values (layouts with one qk-norm per layer)."""
    if t.dim() == 1:
        return t
    if t.is_meta or bool((t == t[:1]).all()):
        return t[0].clone()
    raise CheckpointError(f"{key}: per-head qk-norm parameters differ between heads; the {fmt} layout stores "
                          "one [head_dim] norm per layer (export to the 'hf' layout or a native bundle instead)")


def _is_qk(key: str) -> bool:
    return key.endswith(("attention.wq.weight", "attention.wk.weight"))


def is_qk_norm(key: str) -> bool:
    return ".q_norm." in key or ".k_norm." in key


# ----------------------------------------------------------------------------------------------
# State-dict conversion
# ----------------------------------------------------------------------------------------------
def to_aromni(state: dict, fmt: str, cfg: ModelConfig) -> tuple[dict, dict]:
    """A ``fmt`` state dict -> (aromni state, extras). Extras: ``{"vqmodel": {...}}`` for HF image-tokenizer keys.

    Unknown keys are kept under their own name, so that the shape/key check reports them.
    """
    out, vq = {}, {}
    hd = cfg.head_dim
    for k, v in state.items():
        if fmt in ("hf", "hf-dev") and k.startswith(VQ_PREFIX):
            vq[k[len(VQ_PREFIX):]] = v
            continue
        if fmt == "meta" and k == ROPE_KEY:
            continue
        name = rename(k, fmt, to_aromni=True)
        if name is None:
            out[k] = v  # unexpected: reported by the caller's key check
            continue
        if fmt == "hf" and (_is_qk(name) or is_qk_norm(name)):
            heads = cfg.n_heads if name.endswith("wq.weight") or ".q_norm." in name else cfg.n_kv_heads
            v = to_interleaved(v, heads if v.dim() == 2 else 1, hd)
        out[name] = v
    return out, ({"vqmodel": vq} if vq else {})


def unfuse_meta(state: dict, cfg: ModelConfig, n_shards: int = 1) -> dict:
    """Meta's load hooks also accept pre-fused ``wqkv`` [dim+2kv, dim] and ``w13`` [2f, dim]: split them."""
    if not any(k.endswith(("attention.wqkv.weight", "feed_forward.w13.weight")) for k in state):
        return state
    out = {}
    kv = cfg.n_kv_heads * cfg.head_dim // n_shards
    for k, v in state.items():
        base = k.rsplit(".", 2)[0]
        try:
            if k.endswith("attention.wqkv.weight"):
                q, kk, w = torch.split(v, [cfg.dim // n_shards, kv, kv], dim=0)
                out.update({f"{base}.wq.weight": q, f"{base}.wk.weight": kk, f"{base}.wv.weight": w})
            elif k.endswith("feed_forward.w13.weight"):
                f = cfg.intermediate_size // n_shards
                w1, w3 = torch.split(v, [f, f], dim=0)
                out.update({f"{base}.w1.weight": w1, f"{base}.w3.weight": w3})
            else:
                out[k] = v
        except RuntimeError:
            raise CheckpointError(f"{k}: fused weight of shape {tuple(v.shape)} does not fit the config") from None
    return out


def from_aromni(state: dict, fmt: str, cfg: ModelConfig) -> dict:
    """An aromni state dict -> the ``fmt`` layout (for ``meta`` with a ``rope.freqs`` entry)."""
    out = {}
    hd = cfg.head_dim
    for k, v in state.items():
        name = rename(k, fmt, to_aromni=False)
        if name is None:
            raise CheckpointError(f"{k}: no counterpart in the {fmt} layout")
        if is_qk_norm(k):
            if fmt in ("meta", "hf-dev"):
                v = _shared_norm(v, k, fmt)
            elif fmt == "hf":
                heads = norm_heads(k, cfg)
                v = to_half_split(v, heads, hd) if v.dim() == 2 else \
                    to_half_split(v, 1, hd).unsqueeze(0).expand(heads, hd).contiguous()
        elif fmt == "hf" and _is_qk(k):
            v = to_half_split(v, cfg.n_heads if k.endswith("wq.weight") else cfg.n_kv_heads, hd)
        out[name] = v
    if fmt == "meta":
        # Meta's loader insists on exactly this extra key (value ignored): the inverse frequencies, as LLaMA
        out[ROPE_KEY] = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    return out


def collapse_qk_norms(state: dict, cfg: ModelConfig) -> tuple[dict, ModelConfig]:
    """Per-head qk-norms whose heads are all equal (every released 7B) -> one shared [head_dim] norm."""
    if not (cfg.qk_norm and cfg.qk_norm_per_head):
        return state, cfg
    keys = [k for k in state if is_qk_norm(k)]
    if not keys or not all(state[k].dim() == 2 and bool((state[k] == state[k][:1]).all()) for k in keys):
        return state, cfg
    state = dict(state)
    for k in keys:
        state[k] = state[k][0].contiguous()
    return state, replace(cfg, qk_norm_per_head=False)


class _MetaBuild(torch.overrides.TorchFunctionMode):
    """Inside ``torch.device("meta")``: skips random init (meaningless on meta tensors) and computes ``arange``
    on the CPU (the RoPE table). Both would otherwise run Python meta kernels whose first use imports
    torch._dynamo: seconds of start-up for every CLI call."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", None) in ("normal_", "uniform_", "trunc_normal_"):
            t = args[0] if args else kwargs.get("tensor")  # torch.nn.init.* pass it by keyword
            if isinstance(t, torch.Tensor) and t.is_meta:
                return t
        if func is torch.arange and kwargs.get("device") is None:
            kwargs["device"] = "cpu"
        return func(*args, **kwargs)


def meta_model(cfg: ModelConfig) -> Transformer:
    """A Transformer with meta (storage-less) parameters, to be assigned real tensors."""
    with torch.device("meta"), _MetaBuild():
        return Transformer(cfg)


def expected_shapes(fmt: str, cfg: ModelConfig) -> dict[str, tuple]:
    """Key -> shape that a complete ``fmt`` checkpoint of ``cfg`` holds (computed on the meta device)."""
    with torch.device("meta"), _MetaBuild():
        st = from_aromni(Transformer(cfg).state_dict(), fmt, cfg)
    return {k: tuple(v.shape) for k, v in st.items()}


def check_state(state: dict, expected: dict[str, tuple], source: str, optional: tuple = ()) -> None:
    """Raise a CheckpointError naming missing/unexpected keys and shape mismatches."""
    missing = sorted(k for k in expected if k not in state and k not in optional)
    unexpected = sorted(k for k in state if k not in expected)
    bad = [f"{k}: checkpoint {tuple(state[k].shape)} vs expected {expected[k]}"
           for k in expected if k in state and k not in optional and tuple(state[k].shape) != expected[k]]
    if not (missing or unexpected or bad):
        return

    def few(xs, n=5):
        return f"{xs[:n]}{' …' if len(xs) > n else ''} ({len(xs)})"

    parts = []
    if missing:
        parts.append(f"missing keys {few(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {few(unexpected)}")
    if bad:
        parts.append(f"shape mismatches {few(bad, 3)}")
    raise CheckpointError(f"{source}: does not match its config: " + "; ".join(parts))


# ----------------------------------------------------------------------------------------------
# Meta model-parallel shards (fairscale: column-parallel layers split outputs, row-parallel split inputs,
# ParallelEmbedding splits the embedding dim; every rank has its own qk-norm for its heads)
# ----------------------------------------------------------------------------------------------
_COL = ("attention.wq.weight", "attention.wk.weight", "attention.wv.weight", "feed_forward.w1.weight",
        "feed_forward.w3.weight", "output.weight")
_ROW = ("attention.wo.weight", "feed_forward.w2.weight", "tok_embeddings.weight")


def shard_dim(key: str) -> int | None:
    if key.endswith(_COL):
        return 0
    if key.endswith(_ROW):
        return 1
    return None


def merge_meta_shards(shards: list[dict], cfg: ModelConfig) -> tuple[dict, ModelConfig]:
    """Model-parallel ``consolidated.NN.pth`` state dicts (Meta names) -> one state dict.

    qk-norms become per head ([heads, head_dim], each shard's norm repeated over its heads); the returned
    config has ``qk_norm_per_head=True``.
    """
    n = len(shards)
    if n == 1:
        return shards[0], cfg
    if cfg.n_heads % n or cfg.n_kv_heads % n:
        raise CheckpointError(f"{n} model-parallel shards do not divide {cfg.n_heads} heads / "
                              f"{cfg.n_kv_heads} kv heads")
    keys = [k for k in shards[0] if k != ROPE_KEY]
    for i, s in enumerate(shards[1:], 1):
        if set(k for k in s if k != ROPE_KEY) != set(keys):
            diff = sorted(set(keys) ^ set(k for k in s if k != ROPE_KEY))
            raise CheckpointError(f"model-parallel shard {i} has different keys than shard 0: {diff[:5]}")
    out = {}
    for k in keys:
        parts = [s[k] for s in shards]
        d = shard_dim(k)
        if d is not None:
            out[k] = torch.cat(parts, dim=d)
        elif "_normalization." in k:
            heads = (cfg.n_heads if ".q_normalization." in k else cfg.n_kv_heads) // n
            out[k] = torch.stack(parts).repeat_interleave(heads, dim=0)
        else:  # replicated (RMSNorm weights): identical on every rank; averaged as the HF converter does
            out[k] = torch.stack(parts).float().mean(0).to(parts[0].dtype)
    if cfg.qk_norm:
        cfg = replace(cfg, qk_norm_per_head=True)
    return out, cfg


def split_meta_shards(state: dict, cfg: ModelConfig, n: int) -> list[dict]:
    """Inverse of :func:`merge_meta_shards` (Meta names in, ``n`` shard dicts out)."""
    if cfg.n_heads % n or cfg.n_kv_heads % n:
        raise CheckpointError(f"cannot split {cfg.n_heads} heads / {cfg.n_kv_heads} kv heads into {n} shards")
    shards: list[dict] = [{} for _ in range(n)]
    for k, v in state.items():
        d = shard_dim(k)
        chunks: Sequence[torch.Tensor]
        if d is not None:
            chunks = torch.chunk(v, n, dim=d)
        elif "_normalization." in k and v.dim() == 2:
            heads = v.shape[0] // n
            chunks = [_shared_norm(v[i * heads:(i + 1) * heads], k, f"{n}-shard meta") for i in range(n)]
        else:
            chunks = [v] * n
        for s, c in zip(shards, chunks):
            s[k] = c.clone()
    return shards


# ----------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------
_META_FIELDS = ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of", "ffn_dim_multiplier",
                "norm_eps", "rope_theta", "swin_norm", "max_seq_len")


def merge_meta_params(params: dict, consolidate: dict | None = None) -> dict:
    """Meta's loader: top level of params.json, then its "model" object, then consolidate_params.json."""
    top = {k: v for k, v in params.items() if k != "model"}
    return {**top, **(params.get("model") or {}), **(consolidate or {})}


def config_from_meta(params: dict, vocab_size: int | None = None) -> ModelConfig:
    """Merged Meta params -> ModelConfig (``vocab_size`` from the weights when params lack it)."""
    kw = {k: params[k] for k in _META_FIELDS if params.get(k) is not None}
    if "intermediate_size" in params:
        kw["intermediate_size"] = int(params["intermediate_size"])
    if "qk_normalization" in params:
        kw["qk_norm"] = bool(params["qk_normalization"])
    if kw.get("vocab_size", 0) <= 0:
        if vocab_size is None:
            kw.pop("vocab_size", None)
        else:
            kw["vocab_size"] = vocab_size
    try:
        return ModelConfig(**kw)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"params.json: invalid model parameters ({e})") from None


def meta_params(cfg: ModelConfig) -> dict:
    """The params.json "model" object for ``cfg`` (FFN size expressed through Meta's rounding rule)."""
    f = cfg.intermediate_size
    mult_of, mult = 256, None
    if ModelConfig(dim=cfg.dim, n_heads=cfg.n_heads, multiple_of=256).intermediate_size != f:
        hidden = int(2 * (4 * cfg.dim) / 3)
        mult_of = f  # rounding up to a multiple of f gives exactly f when 0 < hidden <= f
        mult = None if hidden <= f else f / hidden
    p = dict(dim=cfg.dim, n_layers=cfg.n_layers, n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads,
             vocab_size=cfg.vocab_size, multiple_of=mult_of, ffn_dim_multiplier=mult, norm_eps=cfg.norm_eps,
             rope_theta=cfg.rope_theta, qk_normalization=cfg.qk_norm, swin_norm=cfg.swin_norm,
             max_seq_len=cfg.max_seq_len)
    if config_from_meta(p).intermediate_size != f:  # float rounding in ffn_dim_multiplier
        p["intermediate_size"] = f
    return p


def config_from_hf(c: dict, fmt: str) -> ModelConfig:
    """A Chameleon config.json (mainline or the AR-Omni fork) -> ModelConfig."""
    if c.get("model_type", "chameleon") != "chameleon":
        raise CheckpointError(f"config.json: model_type {c['model_type']!r} is not a Chameleon / AR-Omni model")
    if c.get("attention_bias") or c.get("mlp_bias"):
        raise CheckpointError("config.json: biased attention/MLP projections are not supported")
    if c.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"config.json: hidden_act {c['hidden_act']!r} is not supported (silu only)")
    rope = c.get("rope_parameters") or {}
    scaling = c.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
    if scaling:
        raise CheckpointError(f"config.json: RoPE scaling {scaling} is not supported")
    theta = rope.get("rope_theta", c.get("rope_theta", 10000.0))
    try:
        return ModelConfig(
            dim=c["hidden_size"], n_layers=c["num_hidden_layers"], n_heads=c["num_attention_heads"],
            n_kv_heads=c.get("num_key_value_heads") or c["num_attention_heads"], vocab_size=c["vocab_size"],
            intermediate_size=c["intermediate_size"], norm_eps=c.get("rms_norm_eps", 1e-5), rope_theta=float(theta),
            qk_norm=bool(c.get("qk_layernorm", True)) if fmt == "hf-dev" else True,
            qk_norm_per_head=(fmt == "hf"), swin_norm=bool(c.get("swin_norm", False)),
            max_seq_len=int(c.get("max_position_embeddings", 4096)))
    except KeyError as e:
        raise CheckpointError(f"config.json: missing field {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"config.json: invalid model parameters ({e})") from None
