"""The decoding loop on a tiny random model: masks, switches without re-prefill, CFG batching, batching, seeds."""
from __future__ import annotations

import pytest
import torch

from aromni.core.decoding import IMAGE, Chooser, Policy, options_for
from aromni.core.errors import InputError
from aromni.core.generate import cfg_streams, generate, image_stream_token, static_decode_step
from aromni.core.model import build_model, get_config
from aromni.core.tokens import split_segments
from aromni.core.vocab import compact_layout

V = compact_layout(text=100, image=64, audio=64, image_tokens=8)


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return build_model(get_config("tiny", vocab_size=V.vocab_size, max_seq_len=160), seed=0).eval()


def P(*text, tail=()):
    return [V.bos] + [V.text_start + t for t in text] + list(tail)


PROMPTS = [P(1, 2, 3, 4, 5, tail=[V.eoh]), P(9, 8, tail=[V.eoh]), P(40, 41, 42, 43, 44, 45, 46, 47, tail=[V.eoh])]


@torch.inference_mode()
def naive_decode(model, prompts, opts, seeds):
    """Reference loop: every step re-runs each stream's whole context from scratch (no cache, no padding)."""
    pol = Policy(V, opts)
    rows = [pol.new_row(p, opts.max_new_tokens) for p in prompts]
    ch = Chooser(V, opts, rows, prompts, seeds, "cpu")
    use_cfg = opts.use_cfg
    while not all(r.done for r in rows):
        lf, li, lu = [], [], []
        for p, r in zip(prompts, rows):
            full = p + r.out
            lf.append(model(torch.tensor([full]))[0, -1])
            if use_cfg:
                i_stream, u_stream = cfg_streams(full, V, opts.compat)
                li.append(model(torch.tensor([i_stream]))[0, -1])
                lu.append(model(torch.tensor([u_stream]))[0, -1] if u_stream else torch.zeros(V.vocab_size))
        ch.choose(torch.stack(lf), (torch.stack(li), torch.stack(lu)) if use_cfg else None)
    return [r.out for r in rows]


def test_masks_hold_in_every_state(model):
    opts = options_for("chat", max_new_tokens=120, max_speech_tokens=6, temperature=2.0, top_p=1.0)
    # prompts that open an image and a speech span, plus free text
    prompts = [P(1, 2, tail=[V.boi]), P(3, tail=[V.boa]), P(5, 6, 7)]
    outs = []
    for seed in range(4):
        g = generate(model, V, prompts, opts, seeds=[seed, seed + 1, seed + 2])
        outs += [p + t for p, t in zip(prompts, g.tokens)]
    saw = set()
    for seq in outs:
        segs = split_segments(seq, V, allow_open_end=True)  # raises on a wrong-modality id inside a span
        for s in segs:
            saw.add(s.kind)
            if s.kind == "image":
                assert len(s.ids) == V.image_tokens
            if s.kind == "audio":
                assert 1 <= len(s.ids) <= 6
        for t in seq:  # image codes only inside image spans (split_segments rejects stray ones too)
            assert t != V.pad
    assert {"image", "audio", "text"} <= saw


def test_switches_without_reprefill_equal_full_reprefill(model):
    """Forced switches TEXT -> IMAGE -> TEXT -> SPEECH (cap) -> TEXT, sampling on, CFG off: same tokens as a
    decoder that re-runs the whole context every step."""
    opts = options_for("chat", max_new_tokens=40, cfg=False, max_speech_tokens=4, max_text_tokens=3,
                       text_cap_then="boi", force_after=(("eoi", "boa"),), top_k=20)
    prompts = [P(1, 2, 3), P(7, tail=[V.boa])]
    g = generate(model, V, prompts, opts, seeds=[5, 6])
    ref = naive_decode(model, prompts, opts, [5, 6])
    assert g.tokens == ref
    kinds = [s.kind for s in split_segments(prompts[0][1:] + g.tokens[0], V, allow_open_end=True)]
    assert "image" in kinds and "audio" in kinds


def test_cfg_batching_equals_separate_streams(model):
    for compat in (False, True):
        opts = options_for("t2i", compat=compat, image_greedy=True, cfg_text=3.0, cfg_image=1.7)
        prompts = [P(1, 2, tail=[V.eoh, V.boi]),
                   [V.bos, V.boi] + [V.image_id(c) for c in range(8)] + [V.eoi] + P(4)[1:] + [V.boi]]
        g = generate(model, V, prompts, opts, seeds=[0, 1])
        assert g.tokens == naive_decode(model, prompts, opts, [0, 1])
        assert all(len(t) == V.image_tokens + 1 and t[-1] == V.eoi for t in g.tokens)


def test_cfg_inside_chat_matches_separate_streams(model):
    """An image opened mid-response (CFG streams running as holes during text) equals the separate-stream CFG."""
    opts = options_for("chat", max_new_tokens=30, max_text_tokens=4, text_cap_then="boi", image_greedy=True,
                       cfg_image=1.5)
    prompts = [P(1, 2, 3), [V.bos, V.boi] + [V.image_id(c) for c in range(8)] + [V.eoi] + P(9)[1:]]
    g = generate(model, V, prompts, opts, seeds=[3, 4])
    assert g.tokens == naive_decode(model, prompts, opts, [3, 4])
    assert V.boi in g.tokens[0]


def test_image_scale_matters_for_text_only_prompts(model):
    prompts = [P(1, 2, tail=[V.eoh, V.boi])]
    out = {g_img: generate(model, V, prompts, options_for("t2i", image_greedy=True, cfg_image=g_img), seeds=[0]).tokens
           for g_img in (1.0, 4.0)}
    assert out[1.0] != out[4.0]
    i, u = cfg_streams(prompts[0], V)
    assert i == [V.bos, V.boi] and u == [V.boi]
    assert cfg_streams(prompts[0], V, compat=True)[1] == [V.bos, V.boi]
    assert image_stream_token(V.eoi, V) and not image_stream_token(V.text_start, V)


def test_batched_equals_one_by_one(model):
    for task in ("chat", "asr"):
        opts = options_for(task, max_new_tokens=25)
        seeds = [11, 12, 13]
        g = generate(model, V, PROMPTS, opts, seeds=seeds)
        single = [generate(model, V, [p], opts, seeds=[s]).tokens[0] for p, s in zip(PROMPTS, seeds)]
        assert g.tokens == single
        assert len({len(t) for t in g.tokens}) > 1 or task == "chat"  # rows finish at different times


def test_seeds_reproduce(model):
    opts = options_for("chat", max_new_tokens=20)
    a = generate(model, V, PROMPTS, opts, seeds=[1, 2, 3]).tokens
    b = generate(model, V, PROMPTS, opts, seeds=[1, 2, 3]).tokens
    c = generate(model, V, PROMPTS, opts, seeds=[4, 5, 6]).tokens
    assert a == b and a != c


def test_greedy_ignores_seed_and_matches_argmax(model):
    opts = options_for("asr", max_new_tokens=10)
    a = generate(model, V, PROMPTS[:1], opts, seeds=[1]).tokens
    assert a == generate(model, V, PROMPTS[:1], opts, seeds=[2]).tokens
    assert a == naive_decode(model, PROMPTS[:1], opts, [9])


def test_static_step_equals_dynamic(model):
    opts = options_for("chat", max_new_tokens=30, max_text_tokens=5, text_cap_then="boi", cfg_image=1.3)
    a = generate(model, V, PROMPTS, opts, seeds=[1, 2, 3])
    b = generate(model, V, PROMPTS, opts, seeds=[1, 2, 3], static=True)
    assert a.tokens == b.tokens
    # one step, logits compared directly
    torch.set_grad_enabled(False)
    tok = torch.tensor([PROMPTS[0]])
    st = model.setup_cache(1, 40)
    model(tok[:, :-1], st)
    ref = model(tok[:, -1:], st)[:, -1]
    st2 = model.setup_cache(1, 40)
    model(tok[:, :-1], st2)
    L = tok.shape[1] - 1
    kv = torch.zeros(1, st2.max_len, dtype=torch.bool)
    kv[0, :L + 1] = True
    out = static_decode_step(model, tok[:, -1:], torch.tensor([[L]]), torch.tensor([L]), kv)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_on_token_streams_every_token_in_order(model):
    seen = []
    g = generate(model, V, PROMPTS, options_for("chat", max_new_tokens=15), seeds=[0, 1, 2],
                 on_token=lambda b, t: seen.append((b, t)))
    for b in range(3):
        assert [t for r, t in seen if r == b] == g.tokens[b]


def test_budget_and_errors(model):
    g = generate(model, V, PROMPTS, options_for("chat", max_new_tokens=7), seeds=[0, 1, 2])
    assert all(len(t) <= 7 for t in g.tokens) and g.new_tokens == sum(map(len, g.tokens))
    with pytest.raises(InputError):
        generate(model, V, [[V.bos] * 200], options_for("chat"))
    with pytest.raises(InputError):
        generate(model, V, [[V.vocab_size + 5]], options_for("chat"))
    with pytest.raises(InputError):  # an image that cannot fit
        generate(model, V, [P(1, tail=[V.boi])], options_for("t2i", max_new_tokens=3))
    # compat ASR: the cap counts the prompt (reference §4.7): a long prompt leaves no room at all
    g = generate(model, V, [P(*range(30))], options_for("asr", compat=True, max_total_tokens=20))
    assert g.tokens == [[]]


def test_image_row_state_at_start(model):
    codes = [V.image_id(c) for c in range(3)]
    g = generate(model, V, [P(1, tail=[V.boi] + codes)], options_for("t2i"), seeds=[0])
    assert len(g.tokens[0]) == V.image_tokens - 3 + 1 and g.tokens[0][-1] == V.eoi
    assert Policy(V, options_for("t2i")).new_row(P(1, tail=[V.boi] + codes), 10).mode == IMAGE
