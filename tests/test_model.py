"""The decoder: configs, qk-norm/RoPE conventions, swin-norm, GQA and the KV cache (prefill, steps, padding, reuse)."""
from __future__ import annotations

import pytest
import torch

from aromni.core import convert
from aromni.core.model import CONFIGS, ModelConfig, QKNorm, Transformer, apply_rope, build_model, get_config, rope_cache

@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield



def rand_norms(model: Transformer, seed: int = 0) -> Transformer:
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.dim() == 1 or "norm" in name:
            p.copy_((0.1 if name.endswith("bias") else 1) + 0.3 * torch.randn(p.shape, generator=g))
    return model


def tiny(**kw) -> Transformer:
    return rand_norms(build_model(get_config("tiny", **kw), seed=0))


VARIANTS = [dict(), dict(swin_norm=True), dict(qk_norm_per_head=True), dict(n_kv_heads=4), dict(qk_norm=False)]


# --- configs ---------------------------------------------------------------------------------------------
def test_7b_config_matches_reference():
    c = CONFIGS["7b"]
    assert (c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.vocab_size) == (4096, 32, 32, 32, 128, 65536)
    assert c.intermediate_size == ModelConfig(dim=4096).intermediate_size == 11008  # Meta's SwiGLU rounding rule
    assert (c.rope_theta, c.norm_eps, c.qk_norm, c.swin_norm) == (10000.0, 1e-5, True, False)
    with torch.device("meta"):
        n = sum(p.numel() for p in Transformer(c).parameters())
    assert 7.0e9 < n < 7.03e9  # 7.04e9 in transformers incl. the 29M VQ encoder and per-head norms


@pytest.mark.parametrize("name,lo,hi", [("100m", 90e6, 140e6), ("small", 5e6, 30e6), ("tiny", 1e4, 1e6)])
def test_config_sizes(name, lo, hi):
    with torch.device("meta"):
        n = sum(p.numel() for p in Transformer(CONFIGS[name]).parameters())
    assert lo < n < hi
    assert abs(n - CONFIGS[name].num_params()) / n < 0.01


def test_bad_config_rejected():
    with pytest.raises(ValueError):
        ModelConfig(dim=64, n_heads=5)
    with pytest.raises(ValueError):
        ModelConfig(dim=64, n_heads=4, n_kv_heads=3)


# --- building blocks -------------------------------------------------------------------------------------
def test_interleaved_rope_equals_half_split_on_permuted_dims():
    """Meta's adjacent-pair RoPE on x == transformers' rotate-half RoPE on x with permuted head dims."""
    hd, T = 16, 9
    x = torch.randn(2, T, 3, hd)
    cs = rope_cache(T, hd, 10000.0)[torch.arange(T)].unsqueeze(0).expand(2, -1, -1, -1)
    ours = apply_rope(x, cs)
    xp = convert.to_half_split(x.reshape(-1, hd).T.contiguous(), 1, hd).T.reshape(x.shape)
    ang = torch.cat([torch.atan2(cs[..., 1], cs[..., 0])] * 2, -1).unsqueeze(2)
    rot = torch.cat([-xp[..., hd // 2:], xp[..., : hd // 2]], -1)
    hf = xp * ang.cos() + rot * ang.sin()
    back = convert.to_interleaved(hf.reshape(-1, hd).T.contiguous(), 1, hd).T.reshape(x.shape)
    assert torch.allclose(ours, back, atol=1e-5)


def test_qk_norm_per_head_with_equal_rows_is_shared():
    x = torch.randn(2, 5, 4, 16)
    shared = QKNorm(4, 16, per_head=False, eps=1e-5)
    shared.weight.copy_(torch.randn(16))
    shared.bias.copy_(torch.randn(16))
    per = QKNorm(4, 16, per_head=True, eps=1e-5)
    per.weight.copy_(shared.weight.expand(4, 16))
    per.bias.copy_(shared.bias.expand(4, 16))
    assert torch.allclose(shared(x), per(x))
    per.weight[2] += 1  # distinct heads really differ
    assert not torch.allclose(shared(x)[:, :, 2], per(x)[:, :, 2])


def test_swin_norm_changes_the_function():
    ids = torch.randint(0, 256, (1, 12))
    a, b = tiny(), tiny(swin_norm=True)
    b.load_state_dict(a.state_dict())
    assert not torch.allclose(a(ids), b(ids))


def test_gqa_equals_mha_with_repeated_kv_heads():
    ids = torch.randint(0, 256, (2, 10))
    gqa = tiny()  # 4 heads, 2 kv heads
    mha = build_model(get_config("tiny", n_kv_heads=4), seed=0)
    st = dict(gqa.state_dict())
    hd = gqa.cfg.head_dim
    for k in list(st):
        if k.endswith(("wk.weight", "wv.weight")):
            st[k] = st[k].view(2, hd, -1).repeat_interleave(2, 0).reshape(4 * hd, -1)
    mha.load_state_dict(st)
    assert torch.allclose(gqa(ids), mha(ids), atol=1e-5)


def test_packed_sequences_with_mask_and_positions():
    m = tiny()
    a, b = torch.randint(0, 256, (1, 7)), torch.randint(0, 256, (1, 5))
    packed = torch.cat([a, b], 1)
    pos = torch.cat([torch.arange(7), torch.arange(5)]).unsqueeze(0)
    seg = torch.tensor([0] * 7 + [1] * 5)
    causal = torch.ones(12, 12, dtype=torch.bool).tril()
    mask = (causal & (seg[:, None] == seg[None, :])).view(1, 1, 12, 12)
    out = m(packed, positions=pos, attn_mask=mask)
    assert torch.allclose(out[:, :7], m(a), atol=1e-5)
    assert torch.allclose(out[:, 7:], m(b), atol=1e-5)


def test_forward_outputs():
    m = tiny()
    ids = torch.randint(0, 256, (2, 6))
    logits, h = m(ids, return_hidden=True)
    assert logits.shape == (2, 6, 256) and logits.dtype == torch.float32 and h.shape == (2, 6, 64)
    assert torch.allclose(m(ids, last_only=True), logits[:, -1:], atol=1e-5)
    assert torch.allclose(m.output(h).float(), logits, atol=1e-5)  # hidden is post-final-norm (perception loss uses it)


# --- KV cache --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", VARIANTS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "default")
def test_prefill_plus_steps_equals_full_forward(kw):
    m = tiny(**kw)
    ids = torch.randint(0, 256, (2, 20))
    full = m(ids)
    state = m.setup_cache(2, 32)
    parts = [m(ids[:, :9], state)] + [m(ids[:, t:t + 1], state) for t in range(9, 15)] + [m(ids[:, 15:], state)]
    assert state.length == 20
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)


def test_kv_cache_update_writes_slots_and_returns_the_attended_views():
    from aromni.core.model import KVCache

    c = KVCache(3, 8, 2, 4, torch.float32, "cpu")
    k, v = torch.randn(2, 2, 3, 4), torch.randn(2, 2, 3, 4)
    kc, vc = c.update(1, k, v)  # int: slots 1..3, views over [0, 4) of the first 2 rows
    assert kc.shape == (2, 2, 4, 4) and torch.equal(kc[:, :, 1:], k) and torch.equal(vc[:, :, 1:], v)
    assert torch.equal(c.k[:2, :, 1:4], k) and not c.k[2].any() and not c.k[:, :, 4:].any()
    k1, v1 = torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4)
    kc, vc = c.update(torch.tensor([6]), k1, v1)  # tensor slot: the whole cache unless a length is given
    assert kc.shape == (2, 2, 8, 4) and torch.equal(kc[:, :, 6:7], k1) and torch.equal(c.v[:2, :, 6:7], v1)
    kc, _ = c.update(torch.tensor([5]), k1, v1, length=6)
    assert kc.shape == (2, 2, 6, 4) and torch.equal(c.k[:2, :, 5:6], k1)
    assert kc.data_ptr() == c.k.data_ptr()  # views, not copies


@pytest.mark.parametrize("kw", VARIANTS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "default")
def test_one_token_steps_at_tensor_slots_equal_full_forward(kw):
    """The decode step's route (``hidden`` with a slot tensor, with and without a key mask, then ``head``)
    gives the full forward's logits: one implementation of the block serves training, prefill and decoding."""
    m = tiny(**kw)
    ids = torch.randint(0, 256, (2, 12))
    full = m(ids)
    m.setup_cache(2, 16)
    m.hidden(ids[:, :8], torch.arange(8).expand(2, 8), slots=0, length=8, is_causal=True)
    for t in range(8, 12):
        pos = torch.full((2, 1), t)
        if t % 2:
            h = m.hidden(ids[:, t:t + 1], pos, slots=torch.tensor([t]), length=t + 1)
        else:  # the whole cache with a mask of the valid slots (the static-shape step)
            mask = (torch.arange(16) <= t).view(1, 1, 1, 16).expand(2, 1, 1, 16)
            h = m.hidden(ids[:, t:t + 1], pos, mask, slots=torch.tensor([t]))
        torch.testing.assert_close(m.head(h[:, -1]), full[:, t], rtol=1e-5, atol=1e-5)


def test_head_span_computes_only_those_rows():
    m = tiny()
    h = m.hidden(torch.randint(0, 256, (2, 3)), torch.arange(3).expand(2, 3))
    full, part = m.head(h), m.head(h, (10, 50))
    torch.testing.assert_close(part[..., 10:50], full[..., 10:50])
    assert torch.isneginf(part[..., :10]).all() and torch.isneginf(part[..., 50:]).all()


def test_left_padded_rows_equal_unpadded_single_rows():
    m = tiny()
    rows = [torch.randint(3, 256, (n,)) for n in (9, 4, 6)]
    L = max(len(r) for r in rows)
    pad = torch.tensor([L - len(r) for r in rows])
    batch = torch.stack([torch.cat([torch.full((L - len(r),), 1), r]) for r in rows])
    state = m.setup_cache(3, 20)
    state.reset(pad=pad)
    out = m(batch, state)
    steps = torch.randint(3, 256, (3, 4))
    step_out = [m(steps[:, i:i + 1], state) for i in range(4)]
    for b, r in enumerate(rows):
        single = m(torch.cat([r, steps[b]]).unsqueeze(0))
        assert torch.allclose(out[b, pad[b]:], single[0, :len(r)], atol=1e-5)
        for i in range(4):
            assert torch.allclose(step_out[i][b, 0], single[0, len(r) + i], atol=1e-5)
    assert torch.isfinite(out).all()  # fully padded query rows do not produce NaN


def test_cache_reuse_after_reset():
    m = tiny()
    ids = torch.randint(0, 256, (2, 10))
    state = m.setup_cache(2, 16)
    first = m(ids, state)
    k_buf = m.layers[0].attention.cache.k
    other = m(torch.randint(0, 256, (2, 5)), state)  # fill more, then start over
    assert other.shape == (2, 5, 256)
    state.reset()
    assert torch.allclose(m(ids, state), first, atol=1e-6)
    s2 = m.setup_cache(1, 8)  # smaller request reuses the buffers
    assert m.layers[0].attention.cache.k is k_buf
    assert torch.allclose(m(ids[:1, :6], s2), first[:1, :6], atol=1e-5)
    with pytest.raises(ValueError, match="exceeds the cache"):
        m(torch.zeros(1, 3, dtype=torch.long), s2)
    m.drop_cache()
    assert m.layers[0].attention.cache is None


def test_bf16_forward_close_to_fp32():
    m = tiny()
    ids = torch.randint(0, 256, (1, 12))
    ref = m(ids)
    out = m.to(torch.bfloat16)(ids)
    assert out.dtype == torch.float32
    assert (out - ref).abs().max() < 0.1 * ref.abs().max()
