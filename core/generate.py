"""The decoding call: prefill once, then one token per step for a whole batch, over one KV cache.

``generate`` admits every prompt into a fresh :class:`~aromni.core.engine.Engine` and steps it until every row is
done; ``aromni serve`` feeds requests into one running engine instead, so rows join and leave between steps.
Rows are left-padded into one cache and advance in lockstep; a row that finishes early leaves the batch.
Switching between text, image and speech only changes masks and strategy (decoding.Policy): the cache is never
rebuilt, unlike the reference, which re-prefills the whole context at every switch. Image CFG runs as extra
streams of the same cache (core/step.py).
"""
from __future__ import annotations

from typing import Callable

import torch

from .decoding import DecodeOptions, options_for
from .engine import Engine, Generation, Request
from .model import Transformer
from .step import (CPU_COMPILE_MAX_ROWS, cfg_streams, compiled_step, decode_step, image_stream_token, setup_cache,
                   static_step)
from .vocab import VocabLayout

__all__ = ["CPU_COMPILE_MAX_ROWS", "Generation", "cfg_streams", "compiled_step", "decode_step", "generate",
           "image_stream_token", "setup_cache", "static_step"]


@torch.no_grad()  # not inference_mode: the KV cache it allocates is reused by later calls
def generate(model: Transformer, vocab: VocabLayout, prompts: list[list[int]], opts: DecodeOptions | None = None,
             seeds: list[int | None] | None = None, on_token: Callable[[int, int], None] | None = None,
             on_finish: Callable[[int], None] | None = None, static: bool | None = None) -> Generation:
    """Decode a batch of prompts. ``seeds[b]`` seeds row b's own generator (same seed, same row output whatever
    the batch); ``on_token(row, token)`` is called for every token as soon as it is chosen, ``on_finish(row)``
    once when a row ends.
    ``static`` (default: ``static_step``, i.e. ``opts.compile`` where it measured faster): decode steps over the
    whole cache with fixed shapes, compiled when ``opts.compile``."""
    opts = opts or options_for("chat")
    if not prompts:
        return Generation([], [])
    req = Request(model, vocab, prompts, opts, seeds, on_token, on_finish)
    engine = Engine(model)
    engine.admit([req], static)
    while not req.finished:
        engine.step()
    if req.error is not None:
        raise req.error
    return req.gen
