"""Weighted NTP and the perceptual loss against hand computations."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from aromni.core.train.config import LossSection
from aromni.core.train.data import Item, collate
from aromni.core.train.losses import (IGNORE, image_positions, ntp_sum, perceptual_sum, segment_mask,
                                      target_weights)
from aromni.core.vocab import compact_layout

LAY = compact_layout(text=100, image=64, audio=64, image_tokens=4)
BOS, EOS, INS, RES, BOI, EOI = LAY.bos, LAY.eos, LAY.ins, LAY.res, LAY.boi, LAY.eoi
T0 = LAY.text_start


def weights(ids, cfg, task="caption", rl=0, labels=None):
    return target_weights(np.array(ids), None if labels is None else np.array(labels), task, rl, cfg,
                          eos=EOS, ins=INS, res=RES).tolist()


def test_segment_mask_rules():
    a, b, c = T0, T0 + 1, T0 + 2
    assert segment_mask(np.array([a, INS, b, c, RES, a]), INS, RES).tolist() == [0, 0, 1, 1, 0, 0]
    # an end before any start and a start without an end mark nothing
    assert not segment_mask(np.array([RES, a, INS, b]), INS, RES).any()
    # each start takes the first unused end after it
    m = segment_mask(np.array([INS, a, RES, b, INS, c, RES, RES]), INS, RES).tolist()
    assert m == [0, 1, 0, 0, 0, 1, 0, 0]


def test_tail_weights_pretraining():
    # <bos> p p p r r <eos> : response_len 3 -> the last 3 non-eos targets are the 2 response tokens and a prompt token
    ids = [BOS, T0, T0 + 1, T0 + 2, T0 + 3, T0 + 4, EOS]
    cfg = LossSection(response_weight=2.0, response_weighted_tasks=["caption"])
    assert weights(ids, cfg, "caption", 3) == [0, 1, 1, 2, 2, 2, 1]
    assert weights(ids, cfg, "t2i", 3) == [0, 1, 1, 1, 1, 1, 1]  # task not up-weighted
    # response_len larger than the candidates: all non-eos targets
    assert weights(ids, cfg, "caption", 50) == [0, 2, 2, 2, 2, 2, 1]
    # reference default: weight 1 disables it
    assert weights(ids, LossSection(response_weight=1.0), "caption", 3) == [0, 1, 1, 1, 1, 1, 1]


def test_segment_and_tail_combine_and_labels_mask():
    ids = [BOS, T0, INS, T0 + 1, T0 + 2, RES, T0 + 3, EOS]
    cfg = LossSection(response_weight=2.0, response_weighted_tasks=["chat"], segment_weight=3.0)
    # tail: last 2 non-eos valid targets = positions 5 (RES), 6; segment: positions 3, 4
    assert weights(ids, cfg, "chat", 2) == [0, 1, 1, 3, 3, 2, 2, 1]
    # parquet labels: -100 masks targets (and their segment / tail share)
    labels = [IGNORE, IGNORE, IGNORE, T0 + 1, T0 + 2, RES, T0 + 3, EOS]
    cfg = LossSection(response_weight=1.0, segment_weight=3.0)
    assert weights(ids, cfg, "sft", 0, labels) == [0, 0, 0, 3, 3, 1, 1, 1]


def test_prompt_masking():
    ids = [BOS, T0, T0 + 1, T0 + 2, T0 + 3, EOS]
    cfg = LossSection(response_weight=1.0, mask_prompt=True)
    assert weights(ids, cfg, "asr", 2) == [0, 0, 0, 0, 1, 1]


def _items(seqs, cfg, tasks, rls):
    out = []
    for ids, task, rl in zip(seqs, tasks, rls):
        ids = np.array(ids)
        w = target_weights(ids, None, task, rl, cfg, eos=EOS, ins=INS, res=RES)
        out.append(Item(ids, ids.copy(), w, np.zeros(len(ids), dtype=bool)))
    return out


@pytest.mark.parametrize("packed", [False, True])
def test_weighted_ntp_equals_hand_computation(packed):
    cfg = LossSection(response_weight=2.0, response_weighted_tasks=["caption"])
    seqs = [[BOS, T0, T0 + 5, T0 + 6, EOS], [BOS, T0 + 9, T0 + 8, EOS], [BOS, T0 + 1, EOS]]
    tasks, rls = ["caption", "text", "caption"], [2, 0, 1]
    items = _items(seqs, cfg, tasks, rls)
    rows = [[items[0], items[1]], [items[2]]] if packed else [[it] for it in items]
    b = collate(rows, pad_id=EOS, packed=packed)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(*b.tokens.shape, LAY.vocab_size, generator=g)
    got = float(ntp_sum(logits, b.targets, b.weights) / b.weights.sum())

    # by hand: each sample's token t+1 predicted from its own position t, weights from the rules above
    hand_w = {0: [0, 1, 2, 2, 1], 1: [0, 1, 1, 1], 2: [0, 2, 1]}
    num = den = 0.0
    places = ([(0, 0), (0, 5), (1, 0)] if packed else [(0, 0), (1, 0), (2, 0)])
    for s, (row, off) in enumerate(places):
        ids = seqs[s]
        for t in range(len(ids) - 1):
            lp = torch.log_softmax(logits[row, off + t], -1)[ids[t + 1]].item()
            num += -lp * hand_w[s][t + 1]
            den += hand_w[s][t + 1]
    assert den == float(b.weights.sum())
    assert math.isclose(got, num / den, rel_tol=1e-5)
    if packed:  # nothing crosses the boundary: the last token of sample 0 predicts nothing
        assert float(b.weights[0, 4]) == 0.0 and b.positions[0, 5] == 0
        assert not b.attn_mask[0, 0, 5, 4] and b.attn_mask[0, 0, 6, 5]


def test_image_positions():
    img = [LAY.image_offset + c for c in (3, 1, 4, 1)]
    ids = np.array([BOS, T0, BOI, *img, EOI, T0, BOI, *img[:2]])  # the second image is cut off
    cfg = LossSection()
    m = image_positions(ids, None, "t2i", cfg, boi=BOI, image_offset=LAY.image_offset, image_codes=64, n_tokens=4)
    assert np.flatnonzero(m).tolist() == [3, 4, 5, 6]
    labels = ids.copy()
    labels[2] = IGNORE  # BOI not a target -> its span is skipped
    m = image_positions(ids, labels, "t2i", cfg, boi=BOI, image_offset=LAY.image_offset, image_codes=64, n_tokens=4)
    assert not m.any()
    only = LossSection(perceptual_tasks=["text_to_image"])
    assert not image_positions(ids, None, "t2i", only, boi=BOI, image_offset=LAY.image_offset, image_codes=64,
                               n_tokens=4).any()
    bad = ids.copy()
    bad[4] = T0  # a text id inside the span
    assert not image_positions(bad, None, "t2i", cfg, boi=BOI, image_offset=LAY.image_offset, image_codes=64,
                               n_tokens=4).any()


def test_perceptual_loss_touches_exactly_image_positions():
    torch.manual_seed(0)
    B, T, D, C = 2, 9, 6, 5
    tokens = torch.full((B, T), T0)
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[0, 2:6] = True
    mask[1, 5:9] = True
    codes = torch.tensor([[3, 1, 4, 1], [5, 9, 2, 6]])
    tokens[0, 2:6] = LAY.image_offset + codes[0]
    tokens[1, 5:9] = LAY.image_offset + codes[1]
    hidden = torch.randn(B, T, D, requires_grad=True)
    proj = nn.Linear(D, C)
    codebook = torch.randn(64, C)
    codebook.requires_grad_(False)
    s, n = perceptual_sum(hidden, tokens, mask, proj, codebook, LAY.image_offset)
    # hand: MSE over the 8 positions x C dims
    h = torch.cat([hidden[0, 2:6], hidden[1, 5:9]])
    tgt = torch.cat([codebook[codes[0]], codebook[codes[1]]])
    ref = ((h @ proj.weight.T + proj.bias) - tgt).pow(2).mean()
    assert n == 8 * C
    assert torch.allclose(s / n, ref, rtol=1e-5)
    (s / n).backward()
    touched = hidden.grad.abs().sum(-1) > 0
    assert torch.equal(touched, mask)
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0 and proj.bias.grad.abs().sum() > 0


def test_perceptual_loss_empty_mask_still_uses_projection():
    hidden = torch.randn(1, 4, 6, requires_grad=True)
    proj = nn.Linear(6, 3)
    s, n = perceptual_sum(hidden, torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.bool), proj,
                          torch.randn(8, 3), 0)
    assert n == 0 and float(s.detach()) == 0.0
    s.backward()
    assert proj.weight.grad is not None and float(proj.weight.grad.abs().sum()) == 0.0
