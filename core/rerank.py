"""Best of N by the model's own inverse task: score drawn candidates by how likely the model finds the prompt's
words given each candidate (an image's caption, each word's log-probability floored; a clip's transcript), as
DALL-E ranks samples with CLIP but with no second model. An image's score adds how many of the candidates show
the same scene: the log of the share of candidates whose own caption is this one's (the candidates vote, as in
self-consistency decoding), so a prompt phrased in words the captioner never says is still drawn as most of the
candidates read it.

``--candidates N``: candidate 0 is decoded with the task's options as they are (so ``N = 1`` changes nothing),
candidates 1..N-1 are sampled (images at ``image_temperature``, speech at ``temperature``); the one whose
inverse-task log-likelihood is highest is kept.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable

import torch

from .bundle import Omni
from .decoding import DecodeOptions, options_for, with_model_defaults
from .generate import Generation
from .prompts import Example, PromptContext, build_example, caption_prompt
from .rows import base_seed, decode_rows, decode_text
from .tokens import image_codes_of, parse_response, speech_codes_of

Score = Callable[[int, list[list[int]]], list[float]]  # (prompt index, candidate responses) -> their scores


def candidate_options(opts: DecodeOptions) -> DecodeOptions:
    """The options of candidates 1..N-1: the same, but sampled where the task's output is drawn."""
    if opts.task == "tts":
        return replace(opts, greedy=False, markers=False)
    return replace(opts, image_greedy=False)


def candidate_seed(row_seed: int, j: int) -> int:
    """Seed of candidate ``j`` (>= 1) of the row seeded ``row_seed``; the offset keeps it off the ``seed + i``
    of the other rows of a call with a small seed (which would draw the same sample)."""
    return (row_seed * 1_000_003 + j + 0x5DEECE66D) % 2**62


LOGITS_BUDGET = 256 * 2**20  # bytes of fp32 logits per scoring pass (a 65k vocabulary: ~1k tokens per pass)
# Images are scored with each token's log-probability floored here: words the captioner never says (a request
# frame, a synonym: "please show me a huge box") are about equally unlikely under every candidate, but their
# large, noisy log-probabilities would otherwise decide the pick (docs/decoding.md#best-of-n).
CAPTION_TOKEN_FLOOR = -3.0


@torch.no_grad()
def response_logprobs(model, examples: list[Example], batch_size: int = 16, floor: float | None = None) -> list[float]:
    """Sum of log p over each example's last ``response_len`` tokens (teacher forcing, one causal pass per
    batch of at most ``batch_size`` examples and ``LOGITS_BUDGET`` bytes of logits), each token's log p raised to
    ``floor`` when given; ``-inf`` for an example longer than the model's context."""
    ctx, V = model.cfg.max_seq_len, model.cfg.vocab_size
    dev = model.tok_embeddings.weight.device
    out = [-math.inf] * len(examples)
    fits = [i for i, e in enumerate(examples) if len(e.ids) <= ctx and 0 < e.response_len < len(e.ids)]
    fits.sort(key=lambda i: len(examples[i].ids))  # similar lengths together: less padding
    s = 0
    while s < len(fits):
        L = len(examples[fits[min(len(fits), s + batch_size) - 1]].ids)
        n_rows = max(1, min(batch_size, LOGITS_BUDGET // (4 * V * L)))
        idx = fits[s: s + n_rows]
        s += len(idx)
        L = len(examples[idx[-1]].ids)  # sorted: the last is the longest
        x = torch.zeros(len(idx), L, dtype=torch.long)
        for b, i in enumerate(idx):  # right padding: a causal pass never looks at it
            x[b, : len(examples[i].ids)] = torch.tensor(examples[i].ids)
        logits = model(x.to(dev))  # [b, L, V]
        for b, i in enumerate(idx):
            n, r = len(examples[i].ids), examples[i].response_len
            logp = torch.log_softmax(logits[b, n - r - 1: n - 1].float(), dim=-1)  # [r, V]
            tok = logp.gather(-1, x[b, n - r: n].to(dev)[:, None])
            out[i] = float((tok if floor is None else tok.clamp(min=floor)).sum())
    return out


def caption_scores(omni, ctx: PromptContext, images: list[list[int]], text: str) -> list[float]:
    """log p(``text`` | image) under the caption template, for each image's codes, each token's log p floored at
    ``CAPTION_TOKEN_FLOOR``."""
    return response_logprobs(omni.model, [build_example(ctx, "caption", text=text, image_codes=c) for c in images],
                             floor=CAPTION_TOKEN_FLOOR)


def scene_votes(omni, ctx: PromptContext, images: list[list[int]]) -> list[float]:
    """For each image, the log of the share of ``images`` whose greedy caption (the model's own, with its caption
    defaults) is the same as this image's: how many of the candidates drew the same scene."""
    opts = with_model_defaults(options_for("caption"), omni.decode)
    rows, _ = decode_rows(omni, [caption_prompt(ctx, list(c)) for c in images], opts, 0)
    said = [" ".join(decode_text(omni, r).split()) for r in rows]
    return [math.log(said.count(s) / len(said)) for s in said]


def transcript_scores(omni, ctx: PromptContext, clips: list[list[int]], text: str) -> list[float]:
    """log p(``text`` | speech) under the ASR template, for each clip's codes."""
    return response_logprobs(omni.model, [build_example(ctx, "asr", text=text, audio_codes=c) for c in clips])


def best(scores: list[float]) -> int:
    """Index of the highest score; the first on ties (candidate 0 when nothing could be scored)."""
    return max(range(len(scores)), key=lambda k: (scores[k], -k))


def best_of(omni: Omni, prompts: list[list[int]], opts: DecodeOptions, seed: int | None,
            score: Score) -> tuple[list[list[int]], list[Generation]]:
    """Each prompt's response, the best of ``opts.candidates`` by ``score(prompt index, responses)``.
    Candidate 0 of prompt i is what ``decode_rows`` gives it (seed ``seed + i``); the others are sampled
    (``candidate_options``) with seeds derived from it (``candidate_seed``)."""
    s0 = base_seed(seed)
    rows, gens = decode_rows(omni, prompts, opts, s0)
    n = opts.candidates
    if n <= 1 or not prompts:
        return rows, gens
    alt, more = decode_rows(omni, [p for p in prompts for _ in range(n - 1)], candidate_options(opts), None,
                            seeds=[candidate_seed(s0 + i, j) for i in range(len(prompts)) for j in range(1, n)])
    out = []
    for i, first in enumerate(rows):
        cands = [first] + alt[i * (n - 1): (i + 1) * (n - 1)]
        out.append(cands[best(score(i, cands))])
    return out, gens + more


# ----------------------------------------------------------------------------------------------
# Scores of the tasks' candidates
# ----------------------------------------------------------------------------------------------
def spread(has: list[bool], scores: list[float]) -> list[float]:
    """The scores of the candidates that ``has`` an output, in order, and ``-inf`` for those without one."""
    it = iter(scores)
    return [next(it) if h else float("-inf") for h in has]


def transcript_text(omni: Omni, parsed: dict) -> str:
    """The ``<-Ins->`` transcript of a parsed response (its plain text when there is none)."""
    return omni.text.decode(parsed["transcript"] or parsed["text"]).strip()


def speech_scorer(omni: Omni, ctx: PromptContext, sentences: list[str]) -> Score:
    """How likely the model's own ASR finds row i's sentence in each candidate's speech."""
    def score(i: int, cands: list[list[int]]) -> list[float]:
        clips = [speech_codes_of(c, omni.vocab) for c in cands]
        return spread([bool(c) for c in clips], transcript_scores(omni, ctx, [c for c in clips if c], sentences[i]))
    return score


def image_scorer(omni: Omni, ctx: PromptContext, texts: list[str | None]) -> Score:
    """How likely the model's own captioner finds row i's text for each candidate's image, plus the candidates'
    vote for its scene (``scene_votes``); 0 for all when row i has no text."""
    def score(i: int, cands: list[list[int]]) -> list[float]:
        text = texts[i]
        if not text:
            return [0.0] * len(cands)
        has = [any(omni.vocab.is_image(t) for t in c) for c in cands]
        images = [image_codes_of(c, omni.vocab) for c, h in zip(cands, has) if h]
        fit = caption_scores(omni, ctx, images, text)
        return spread(has, [f + v for f, v in zip(fit, scene_votes(omni, ctx, images))])
    return score


def s2i_scorer(omni: Omni, ctx: PromptContext) -> Score:
    """Speech -> image: each candidate's image against the first candidate's own transcript."""
    def score(i: int, cands: list[list[int]]) -> list[float]:
        heard = transcript_text(omni, parse_response(cands[0], omni.vocab))
        return image_scorer(omni, ctx, [heard])(0, cands)
    return score
