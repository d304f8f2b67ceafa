"""CIDEr-D (Vedantam et al. 2015), as scored by the COCO caption evaluation code.

Each sentence becomes four TF-IDF vectors (1- to 4-grams); document frequencies come from the references of
the evaluated set itself (one document per image), so scores depend on the whole set and a one-image set
scores 0. Per n: the clipped cosine ``sum min(h, r) * r / (|h| |r|)`` times a Gaussian length penalty
``exp(-(len_h - len_r)^2 / (2 sigma^2))``; averaged over n and references, times 10. As in the COCO code,
"length" counts bigrams and norms include every n-gram.

Tokenisation is a PTB-like approximation (lowercase, punctuation removed, clitics kept on their word)
because the COCO code's Stanford PTB tokenizer needs Java; pass ``tokenize=False`` to score
pre-tokenised, space-separated text.
"""
from __future__ import annotations

import math
import re
from collections import Counter, defaultdict

from ..errors import AromniError

_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def tokenize(text: str) -> list[str]:
    """Lowercase words; punctuation is dropped, word-internal apostrophes kept."""
    return _TOKEN.findall(text.lower().replace("\u2019", "'"))


def _ngrams(words: list[str], n: int) -> Counter:
    c: Counter = Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            c[tuple(words[i:i + k])] += 1
    return c


def _vector(counts: Counter, df: dict, log_docs: float, n: int):
    vec: list[defaultdict[tuple[str, ...], float]] = [defaultdict(float) for _ in range(n)]
    norm = [0.0] * n
    length = 0
    for gram, tf in counts.items():
        k = len(gram) - 1
        w = tf * (log_docs - math.log(max(1.0, df.get(gram, 0.0))))
        vec[k][gram] = w
        norm[k] += w * w
        if k == 1:
            length += tf
    return vec, [math.sqrt(x) for x in norm], length


def _similarity(h, r, sigma: float, n: int) -> list[float]:
    (vh, nh, lh), (vr, nr, lr) = h, r
    delta = float(lh - lr)
    out = []
    for k in range(n):
        val = sum(min(w, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, w in vh[k].items())
        if nh[k] != 0 and nr[k] != 0:
            val /= nh[k] * nr[k]
        out.append(val * math.exp(-(delta ** 2) / (2 * sigma ** 2)))
    return out


def cider_d(refs: list[list[str]], hyps: list[str], n: int = 4, sigma: float = 6.0,
            tokenize_text: bool = True) -> tuple[float, list[float]]:
    """Corpus CIDEr-D and per-image scores for one hypothesis and one or more references per image."""
    if len(refs) != len(hyps):
        raise AromniError(f"{len(refs)} reference sets but {len(hyps)} hypotheses")
    if not hyps:
        raise AromniError("CIDEr needs at least one image")
    if any(len(r) == 0 for r in refs):
        raise AromniError("every image needs at least one reference caption")
    split = tokenize if tokenize_text else str.split
    ref_counts = [[_ngrams(split(r), n) for r in rs] for rs in refs]
    hyp_counts = [_ngrams(split(h), n) for h in hyps]
    df: Counter = Counter()
    for rs in ref_counts:
        df.update(set(g for c in rs for g in c))
    log_docs = math.log(float(len(refs)))
    scores = []
    for hc, rcs in zip(hyp_counts, ref_counts):
        hv = _vector(hc, df, log_docs, n)
        per_n = [0.0] * n
        for rc in rcs:
            for k, v in enumerate(_similarity(hv, _vector(rc, df, log_docs, n), sigma, n)):
                per_n[k] += v
        scores.append(sum(per_n) / n / len(rcs) * 10.0)
    return sum(scores) / len(scores), scores
