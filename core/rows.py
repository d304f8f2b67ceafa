"""Prompts decoded as rows: one seed per row and batches of ``opts.batch_size``.

Row i of a call is decoded with its own generator seeded ``seed + i`` (i counts prompts in input order), so
batch size and batch composition never change a row's output.
"""
from __future__ import annotations

import random
from typing import Callable

from .bundle import Omni
from .decoding import DecodeOptions
from .generate import Generation, generate
from .tokens import cut_at_stop


def base_seed(seed: int | None) -> int:
    """``seed``, or a fresh random one."""
    return int(seed) if seed is not None else random.SystemRandom().randrange(2**62)


def engine(omni: Omni) -> Callable[..., Generation]:
    """The decoding call of every task: ``omni.engine`` when set (a server's batcher, with ``generate``'s
    signature), else ``generate``."""
    return omni.engine or generate


def decode_rows(omni: Omni, prompts: list[list[int]], opts: DecodeOptions, seed: int | None,
                on_token: Callable[[int, int], None] | None = None,
                seeds: list[int] | None = None) -> tuple[list[list[int]], list[Generation]]:
    """Decode prompts in batches of ``opts.batch_size``; row i uses seed ``seed + i`` (or ``seeds[i]``)."""
    if seeds is None:
        s0 = base_seed(seed)
        seeds = [s0 + i for i in range(len(prompts))]
    out: list[list[int]] = []
    gens = []
    bs = opts.batch_size
    for i in range(0, len(prompts), bs):
        chunk = prompts[i: i + bs]
        cb = None if on_token is None else (lambda b, t, i=i: on_token(i + b, t))
        g = engine(omni)(omni.model, omni.vocab, chunk, opts, seeds=seeds[i: i + bs], on_token=cb)
        out += g.tokens
        gens.append(g)
    return out, gens


def decode_text(omni: Omni, ids: list[int]) -> str:
    """Text of a response: cut at the first ``</s>``/``<eom>``, only text ids, stripped."""
    v = omni.vocab
    return omni.text.decode([t for t in cut_at_stop(ids, v) if v.is_text(t)]).strip()
