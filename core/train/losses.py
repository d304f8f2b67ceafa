"""Training losses: weighted next-token prediction and the perceptual loss (AR-Omni's objective).

Per-sample arrays are aligned with the sample's tokens: ``w[t]`` is the weight of token t *as a target*
(predicted from position t-1), so position 0 is never a target. The batch shifts them by one
(``weights[:, t] = w[t + 1]``), which keeps them correct when samples are packed into one row.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

IGNORE = -100


def segment_mask(ids: np.ndarray, start: int, end: int) -> np.ndarray:
    """True strictly between a ``start`` marker and the first unused ``end`` marker after it.

    Markers themselves are excluded; a start without an end, or an end without a start, marks nothing.
    """
    ids = np.asarray(ids)
    out = np.zeros(len(ids), dtype=bool)
    ends = list(np.flatnonzero(ids == end))
    used = 0  # ends are consumed in order: the first unused one after each start
    for s in np.flatnonzero(ids == start):
        while used < len(ends) and ends[used] <= s:
            used += 1
        if used == len(ends):
            break
        out[s + 1: ends[used]] = True
        used += 1
    return out


def target_weights(ids: np.ndarray, labels: np.ndarray | None, task: str, response_len: int, cfg, *,
                   eos: int, ins: int, res: int) -> np.ndarray:
    """Weights [L] of each token as a target.

    ``valid`` = label is not -100 (and t > 0); tail: for tasks in ``cfg.response_weighted_tasks`` the last
    ``min(response_len, n)`` valid non-eos targets get ``cfg.response_weight``; segment: valid targets
    strictly inside <-Ins-> ... <-Res-> get ``cfg.segment_weight``; the factors multiply.
    ``cfg.mask_prompt`` zeroes every target before the last ``response_len`` tokens.
    """
    ids = np.asarray(ids)
    lab = ids if labels is None else np.asarray(labels)
    L = len(ids)
    valid = lab != IGNORE
    valid[:1] = False
    w = valid.astype(np.float32)
    if cfg.response_weight != 1 and task in (cfg.response_weighted_tasks or ()) and response_len > 0:
        cand = np.flatnonzero(valid & (lab != eos))
        tail = cand[len(cand) - min(response_len, len(cand)):]
        w[tail] *= cfg.response_weight
    if cfg.segment_weight != 1:
        seg = segment_mask(ids, ins, res) & valid
        w[seg] *= cfg.segment_weight
    if cfg.mask_prompt and response_len > 0:
        w[: max(0, L - response_len)] = 0.0
    return w


def image_positions(ids: np.ndarray, labels: np.ndarray | None, task: str, cfg, *, boi: int, image_offset: int,
                    image_codes: int, n_tokens: int) -> np.ndarray:
    """Positions [L] whose hidden state enters the perceptual loss.

    For each <boi> at s whose label is not -100 and with a full image after it (s + n_tokens < L), the
    ``n_tokens`` positions s+1 .. s+n_tokens: the image tokens themselves. Unlike the reference, spans that
    hold a non-image id are skipped. ``cfg.perceptual_tasks`` (null: all) selects tasks.
    """
    ids = np.asarray(ids)
    out = np.zeros(len(ids), dtype=bool)
    if cfg.perceptual_tasks is not None and task not in cfg.perceptual_tasks:
        return out
    lab = ids if labels is None else np.asarray(labels)
    for s in np.flatnonzero(ids == boi):
        if lab[s] == IGNORE or s + n_tokens >= len(ids):
            continue
        span = ids[s + 1: s + 1 + n_tokens]
        if ((span >= image_offset) & (span < image_offset + image_codes)).all():
            out[s + 1: s + 1 + n_tokens] = True
    return out


def ntp_sum(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ CE(logits[b,t], targets[b,t]) · weights[b,t] (fp32). logits [B,T,V]; targets, weights [B,T].

    Targets where the weight is 0 may hold any value (-100 included)."""
    V = logits.shape[-1]
    tgt = targets.reshape(-1).clamp(0, V - 1)
    ce = F.cross_entropy(logits.reshape(-1, V).float(), tgt, reduction="none")
    return (ce * weights.reshape(-1).float()).sum()


def perceptual_sum(hidden: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, proj: nn.Module,
                   codebook: torch.Tensor, image_offset: int) -> tuple[torch.Tensor, int]:
    """(Σ squared error, number of elements) between ``proj(hidden)`` and the frozen codebook rows of the
    image codes, at the ``mask`` positions. hidden [B,T,D] (post-final-norm), tokens/mask [B,T],
    codebook [K, C]. The projection always runs (on zero rows if need be) so that data-parallel
    wrappers see its parameters used on every rank."""
    h = hidden[mask]  # [N, D]
    pred = proj(h).float()  # [N, C]
    target = codebook[(tokens[mask] - image_offset).clamp(0, codebook.shape[0] - 1)].float()
    return (pred - target.detach()).pow(2).sum(), pred.numel()


def normalizer(total: float) -> float:
    """The reference's ``max(1, Σ w)``; also used for the perceptual element count."""
    return max(1.0, float(total))
