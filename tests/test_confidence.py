"""Confidence: per-token log-probabilities recorded by the decoder, and their summary for a text answer."""
from __future__ import annotations

import math

import pytest
import torch

from aromni.core.decoding import build_masks, options_for
from aromni.core.generate import generate
from aromni.core.model import build_model, get_config
from aromni.core.vocab import compact_layout

V = compact_layout(text=100, image=64, audio=64, image_tokens=8)


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return build_model(get_config("tiny", vocab_size=V.vocab_size, max_seq_len=160), seed=0).eval()


def P(*text, tail=()):
    return [V.bos] + [V.text_start + t for t in text] + list(tail)


@torch.no_grad()
def test_greedy_logprobs_equal_the_models_own_distribution(model):
    """Greedy text under the asr mask: each recorded log-prob is log_softmax of the masked logits at the token."""
    opts = options_for("asr", max_new_tokens=6)
    prompt = P(1, 2, 3, tail=[V.eoh])
    g = generate(model, V, [prompt], opts)
    toks, lps = g.tokens[0], g.logprobs[0]
    assert len(toks) == len(lps) >= 1
    allowed = build_masks(V, opts)[0]
    seq = list(prompt)
    for t, lp in zip(toks, lps):
        logits = model(torch.tensor([seq]))[0, -1].float().masked_fill(~allowed, float("-inf"))
        want = torch.log_softmax(logits, -1)
        assert int(logits.argmax()) == t
        assert lp == pytest.approx(float(want[t]), abs=1e-4)
        assert lp <= 0.0
        seq.append(t)


def test_forced_tokens_have_no_logprob(model):
    """An image span: 8 codes chosen by the model, then <eoi> forced (None)."""
    opts = options_for("t2i", max_new_tokens=20, cfg=False)
    g = generate(model, V, [P(4, 5, tail=[V.boi])], opts, seeds=[0])
    toks, lps = g.tokens[0], g.logprobs[0]
    assert toks[-1] == V.eoi and lps[-1] is None
    assert all(isinstance(x, float) and x <= 0.0 and math.isfinite(x) for x in lps[:-1])


def test_sampled_logprobs_are_per_row_and_batch_independent(model):
    opts = options_for("chat", max_new_tokens=5, temperature=1.5, images=False, speech=False)
    a = generate(model, V, [P(7, 8)], opts, seeds=[3])
    b = generate(model, V, [P(1, 2, 3, 4), P(7, 8)], opts, seeds=[9, 3])
    assert a.tokens[0] == b.tokens[1]
    assert a.logprobs[0] == pytest.approx(b.logprobs[1], abs=1e-4)
