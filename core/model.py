"""The AR-Omni / Chameleon decoder: config table, transformer, and a preallocated KV cache.

Internal conventions (loaders convert every checkpoint layout into these):
- q/k projection rows are in Meta order, RoPE rotates adjacent pairs (0,1), (2,3), ...;
- qk-norm is a LayerNorm over head_dim whose weight/bias are ``[head_dim]`` (shared by all heads, Meta and
  HF-dev) or ``[n_heads, head_dim]`` (per head, mainline transformers);
- FFN is SwiGLU ``w2(silu(w1 x) * w3 x)``; the LM head is untied.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelConfig:
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    # n_kv_heads and intermediate_size accept None (derive it) in the constructor: ints once built (__post_init__)
    n_kv_heads: int = None  # type: ignore[assignment]  # None: n_heads
    vocab_size: int = 65536
    intermediate_size: int = None  # type: ignore[assignment]  # None: the Meta rule from dim, multiple_of, ...
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    qk_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    qk_norm: bool = True
    qk_norm_per_head: bool = False
    swin_norm: bool = False
    max_seq_len: int = 4096

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.intermediate_size is None:
            hidden = int(2 * (4 * self.dim) / 3)
            if self.ffn_dim_multiplier is not None:
                hidden = int(self.ffn_dim_multiplier * hidden)
            self.intermediate_size = self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)
        if self.dim % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError("dim must divide by n_heads and n_heads by n_kv_heads")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def num_params(self, embeddings: bool = True) -> int:
        d, f, L = self.dim, self.intermediate_size, self.n_layers
        kv = self.n_kv_heads * self.head_dim
        per_layer = d * d * 2 + d * kv * 2 + 3 * d * f + 2 * d
        emb = 2 * self.vocab_size * d if embeddings else 0
        return L * per_layer + emb + d


CONFIGS: dict[str, ModelConfig] = {
    # Chameleon-7B / Anole-7B / AR-Omni-v0.1 (the released checkpoints' params.json)
    "7b": ModelConfig(dim=4096, n_layers=32, n_heads=32, vocab_size=65536, intermediate_size=11008),
    # Chameleon-30B ("34B" in the paper): swin-norm, 64 heads, GQA 8 [unverified; converter reads params.json]
    "30b": ModelConfig(dim=8192, n_layers=48, n_heads=64, n_kv_heads=8, vocab_size=65536, intermediate_size=22016,
                       swin_norm=True),
    # ~1B for GPU MFU benchmarks
    "1b": ModelConfig(dim=2048, n_layers=16, n_heads=16, vocab_size=65536, intermediate_size=5632),
    # ~100M for CPU benchmarks (65536 vocab: the AR-Omni layout)
    "100m": ModelConfig(dim=640, n_layers=10, n_heads=10, vocab_size=65536, intermediate_size=1728),
    # the bundled default model (recipes/default): ~10 M parameters, 20 MB in fp16 next to ~18 MB of tokenizers
    # (bundle budget 40 MB); 5 heads of 64 sharing one kv head; vocab = the compact layout of its tokenizers
    "small": ModelConfig(dim=320, n_layers=8, n_heads=5, n_kv_heads=1, vocab_size=2624, intermediate_size=864,
                         max_seq_len=512),
    # unit tests: milliseconds per forward
    "tiny": ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=256, intermediate_size=128,
                        max_seq_len=256),
}


def get_config(name: str, **overrides) -> ModelConfig:
    if name not in CONFIGS:
        raise KeyError(f"unknown model config {name!r} (known: {', '.join(CONFIGS)})")
    return replace(CONFIGS[name], **overrides)


# ----------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fp32 statistics, cast back, then scale (as HF and Meta)
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


class QKNorm(nn.Module):
    """LayerNorm over head_dim; weight/bias shared ``[hd]`` or per head ``[heads, hd]``."""

    def __init__(self, n_heads: int, head_dim: int, per_head: bool, eps: float):
        super().__init__()
        shape = (n_heads, head_dim) if per_head else (head_dim,)
        self.weight = nn.Parameter(torch.ones(shape))
        self.bias = nn.Parameter(torch.zeros(shape))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, T, H, hd]
        y = F.layer_norm(x.float(), x.shape[-1:], eps=self.eps).type_as(x)
        return y * self.weight + self.bias


def rope_cache(seq_len: int, head_dim: int, theta: float) -> torch.Tensor:
    """[seq_len, head_dim/2, 2] (cos, sin) for interleaved-pair RoPE, fp32."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64)[: head_dim // 2] / head_dim))
    t = torch.arange(seq_len, dtype=torch.float64)
    ang = torch.outer(t, inv)
    return torch.stack([ang.cos(), ang.sin()], dim=-1).float()


def apply_rope(x: torch.Tensor, cs: torch.Tensor) -> torch.Tensor:
    """x: [B, T, H, hd]; cs: [B, T, hd/2, 2]. Rotates adjacent pairs."""
    xs = x.float().reshape(*x.shape[:-1], -1, 2)
    cs = cs.unsqueeze(2)  # [B, T, 1, hd/2, 2]
    out = torch.stack([xs[..., 0] * cs[..., 0] - xs[..., 1] * cs[..., 1],
                       xs[..., 1] * cs[..., 0] + xs[..., 0] * cs[..., 1]], dim=-1)
    return out.flatten(3).type_as(x)


class KVCache(nn.Module):
    """Preallocated keys and values ``[batch, n_kv_heads, max_len, head_dim]`` of one attention layer."""

    k: torch.Tensor  # buffers
    v: torch.Tensor

    def __init__(self, batch: int, max_len: int, n_kv: int, head_dim: int, dtype, device):
        super().__init__()
        shape = (batch, n_kv, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, slots: int | torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k``, ``v`` [B, n_kv, T, hd] at slots ``slots .. slots+T`` (an int) or at the slot indices
        ``slots`` [T] (a tensor: no host value, so a compiled step keeps one graph); return the cached keys and
        values of the first B rows over slots ``[0, length)`` (default: up to the last slot written by an int,
        the whole cache for a tensor)."""
        B, T = k.shape[0], k.shape[2]
        if length is None:
            length = slots + T if isinstance(slots, int) else self.k.shape[2]
        kc, vc = self.k[:B, :, :length], self.v[:B, :, :length]
        if isinstance(slots, int):
            kc[:, :, slots: slots + T] = k
            vc[:, :, slots: slots + T] = v
        else:
            kc.index_copy_(2, slots, k)
            vc.index_copy_(2, slots, v)
        return kc, vc


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        hd, kv = cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.wk = nn.Linear(cfg.dim, kv, bias=False)
        self.wv = nn.Linear(cfg.dim, kv, bias=False)
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)
        if cfg.qk_norm:
            self.q_norm = QKNorm(cfg.n_heads, hd, cfg.qk_norm_per_head, cfg.qk_norm_eps)
            self.k_norm = QKNorm(cfg.n_kv_heads, hd, cfg.qk_norm_per_head, cfg.qk_norm_eps)
        self.cache: KVCache | None = None

    def forward(self, x: torch.Tensor, cs: torch.Tensor, mask: torch.Tensor | None = None,
                slots: int | torch.Tensor | None = None, length: int | None = None,
                is_causal: bool = False) -> torch.Tensor:
        """x [B, T, dim]; cs [B, T, hd/2, 2] RoPE of each row's positions; ``mask`` (bool, True = attend)
        broadcastable to [B, 1, T, keys]. Without ``slots`` the keys are this call's own; with ``slots`` they
        are written to the KV cache there (see ``KVCache.update``) and attention runs over cache slots
        ``[0, length)``. Prefill (T tokens) and one-token decode steps both come through here."""
        B, T, _ = x.shape
        c = self.cfg
        q = self.wq(x).view(B, T, c.n_heads, c.head_dim)
        k = self.wk(x).view(B, T, c.n_kv_heads, c.head_dim)
        v = self.wv(x).view(B, T, c.n_kv_heads, c.head_dim)
        if c.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cs), apply_rope(k, cs)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, T, hd]
        if self.cache is not None and slots is not None:
            k, v = self.cache.update(slots, k, v, length)
        gqa = c.n_heads != c.n_kv_heads  # SDPA broadcasts the kv heads: no per-group copy of the cache
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal and T > 1, enable_gqa=gqa)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return self.wo(y.transpose(1, 2).reshape(B, T, c.dim))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.intermediate_size, bias=False)  # gate
        self.w3 = nn.Linear(cfg.dim, cfg.intermediate_size, bias=False)  # up
        self.w2 = nn.Linear(cfg.intermediate_size, cfg.dim, bias=False)  # down

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(cfg)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.swin = cfg.swin_norm

    def forward(self, x, cs, mask=None, slots=None, length=None, is_causal=False):
        """One pre-norm (or, with ``swin_norm``, residual post-norm) block; arguments as ``Attention.forward``."""
        if self.swin:  # residual post-norm (Chameleon-34B style): same weights on the branch outputs
            h = x + self.attention_norm(self.attention(x, cs, mask, slots, length, is_causal))
            return h + self.ffn_norm(self.feed_forward(h))
        h = x + self.attention(self.attention_norm(x), cs, mask, slots, length, is_causal)
        return h + self.feed_forward(self.ffn_norm(h))


# ----------------------------------------------------------------------------------------------
# Inference state
# ----------------------------------------------------------------------------------------------
class InferenceState:
    """Per-request decoding state: the KV caches' fill level and each row's left padding.

    Rows are left-padded to a common length; ``pad[b]`` tokens at the start of row b are masked out as
    keys and positions start at 0 at each row's first real token.
    """

    def __init__(self, batch: int, max_len: int, device):
        self.batch, self.max_len = batch, max_len
        self.length = 0
        self.pad = torch.zeros(batch, dtype=torch.long, device=device)
        self.padded = False  # any row left-padded (decided once per request, at reset)

    def reset(self, pad: torch.Tensor | None = None) -> None:
        self.length = 0
        self.pad = torch.zeros_like(self.pad) if pad is None else pad.to(self.pad.device)
        self.padded = bool(self.pad.any())


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        # fp32 RoPE table kept out of the buffers so .to(bf16) never rounds it
        self.rope = rope_cache(cfg.max_seq_len, cfg.head_dim, cfg.rope_theta)
        self.activation_checkpointing = False

    # -- setup --------------------------------------------------------------------------------
    def init_weights(self, std: float = 0.02, generator: torch.Generator | None = None) -> "Transformer":
        for name, p in self.named_parameters():
            if p.dim() == 2:
                nn.init.normal_(p, 0.0, std, generator=generator)
                if name.endswith(("wo.weight", "w2.weight")):
                    p.data.mul_(1 / math.sqrt(2 * self.cfg.n_layers))
        return self

    def reset_rope(self) -> None:
        """Recompute the RoPE table (after building on the meta device or changing max_seq_len)."""
        self.rope = rope_cache(self.cfg.max_seq_len, self.cfg.head_dim, self.cfg.rope_theta)

    def setup_cache(self, batch: int, max_len: int | None = None, dtype=None) -> InferenceState:
        """Allocate (or reuse, if big enough) KV caches; returns a fresh state."""
        max_len = min(max_len or self.cfg.max_seq_len, self.cfg.max_seq_len)
        w = self.tok_embeddings.weight
        dtype = dtype or w.dtype
        for a in self.attentions():
            c = a.cache
            if c is None or c.k.shape[0] < batch or c.k.shape[2] < max_len or c.k.dtype != dtype:
                a.cache = KVCache(batch, max_len, self.cfg.n_kv_heads, self.cfg.head_dim, dtype, w.device)
        return InferenceState(batch, max_len, w.device)

    def drop_cache(self) -> None:
        for a in self.attentions():
            a.cache = None

    def attentions(self) -> list[Attention]:
        """Each block's attention layer, which holds its KV cache."""
        return [cast(Block, layer).attention for layer in self.layers]  # nn.ModuleList is untyped

    # -- forward ------------------------------------------------------------------------------
    def _positions(self, B: int, T: int, start: int, pad: torch.Tensor | None, pos: torch.Tensor | None):
        if pos is not None:
            return pos
        p = torch.arange(start, start + T, device=self.rope.device).unsqueeze(0).expand(B, T)
        if pad is not None:
            p = (p - pad.view(-1, 1)).clamp_min(0)
        return p

    @staticmethod
    def _cache_mask(L: int, T: int, pad: torch.Tensor, device) -> torch.Tensor:
        """[B, 1, T, L+T] bool: causal, no left padding."""
        kidx = torch.arange(L + T, device=device)
        qidx = torch.arange(L, L + T, device=device)
        mask = (kidx.view(1, 1, -1) <= qidx.view(1, -1, 1)) & (kidx.view(1, 1, -1) >= pad.view(-1, 1, 1))
        mask = mask.unsqueeze(1)
        # a fully padded query row would give NaN: let it see itself
        return mask | (kidx.view(1, 1, 1, -1) == qidx.view(1, 1, -1, 1))

    def forward(self, tokens: torch.Tensor, state: InferenceState | None = None, *,
                positions: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                return_hidden: bool = False, last_only: bool = False):
        """tokens [B, T] -> logits [B, T, V] (fp32), or (logits, hidden [B, T, D]) with ``return_hidden``.

        Without ``state``: a full causal pass (training). ``positions`` [B, T] and a boolean ``attn_mask``
        [B, 1, T, T] (True = attend) support packed sequences. With ``state``: tokens are appended to the KV
        cache at ``state.length``; left padding is honoured.
        """
        B, T = tokens.shape
        if state is None:
            pos = self._positions(B, T, 0, None, positions)
            h = self.hidden(tokens, pos, attn_mask, is_causal=attn_mask is None)
        else:
            L = state.length
            if L + T > state.max_len:
                raise ValueError(f"sequence of {L + T} tokens exceeds the cache ({state.max_len})")
            pad = state.pad[:B]
            pos = self._positions(B, T, L, pad, positions)
            if not state.padded and (L == 0 or T == 1):
                # plain causal prefill, or one new token that may see every cached slot: SDPA's fast path
                mask = None
            else:
                mask = self._cache_mask(L, T, pad, tokens.device)
            h = self.hidden(tokens, pos, mask, slots=L, length=L + T, is_causal=L == 0)
            state.length += T
        if last_only:
            h = h[:, -1:]
        logits = self.head(h)
        return (logits, h) if return_hidden else logits

    def hidden(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None = None,
               slots: int | torch.Tensor | None = None, length: int | None = None,
               is_causal: bool = False) -> torch.Tensor:
        """Embeddings -> blocks -> final norm: [B, T, D]. ``positions`` [B, T] index the RoPE table; ``mask``,
        ``slots``, ``length``, ``is_causal`` as ``Attention.forward`` (``slots``: write the KV cache there)."""
        if self.rope.device != tokens.device:
            self.rope = self.rope.to(tokens.device)
        x = self.tok_embeddings(tokens)
        cs = self.rope[positions]  # [B, T, hd/2, 2]
        for layer in self.layers:
            if self.activation_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, cs, mask, slots, length, is_causal,
                                                      use_reentrant=False)
            else:
                x = layer(x, cs, mask, slots, length, is_causal)
        return self.norm(x)

    def head(self, h: torch.Tensor, span: tuple[int, int] | None = None) -> torch.Tensor:
        """fp32 logits of hidden states ``h`` [..., D]. ``span`` = (lo, hi): only those vocabulary rows of the
        LM head are computed, the other logits are -inf (for a caller whose token masks remove them anyway)."""
        if span is None:
            return self.output(h).float()
        lo, hi = span
        out = torch.full((*h.shape[:-1], self.cfg.vocab_size), float("-inf"), device=h.device)
        rows = getattr(self.output, "forward_rows", None)  # a quantised head computes its own rows
        out[..., lo:hi] = (rows(h, lo, hi) if rows else F.linear(h, self.output.weight[lo:hi])).float()
        return out


def build_model(cfg: ModelConfig, device="cpu", dtype=torch.float32, seed: int | None = 0) -> Transformer:
    """A randomly initialised model (deterministic for a given seed)."""
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    m = Transformer(cfg).init_weights(generator=g)
    return m.to(device=device, dtype=dtype)
