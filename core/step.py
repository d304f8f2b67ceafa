"""One decoding step and its parts: the CFG streams of a prompt, the step over the KV cache (eager or compiled)
and the cache it runs over.

Image CFG (docs/decoding.md) runs as extra rows of the same cache: for every sequence b there are three streams,
F (the full context), I (only the tokens in {<bos>, <boi>, <eoi>, image codes}) and U (unconditional), and one
forward per step serves all of them. Every stream receives every token; a token that a stream must not see is
written as a *hole* (masked out of attention, no position consumed), so I is exactly the filtered context and
U restarts at each ``<boi>``. The mixed logits ``U + g_img (I - U) + g_txt (F - I)`` pick the image code.

U is ``[<boi>]`` (+ the codes so far); the reference uses ``[<bos>, <boi>]`` (``compat``). For a prompt without
images the reference's I equals its U, so its image scale does nothing; here I = ``[<bos>, <boi>]`` differs
from U, so ``cfg_image`` weighs the pull of the sequence-start context, and ``cfg_image = 1`` reproduces the
reference's effective guidance ``I + g_txt (F - I)`` exactly.
"""
from __future__ import annotations

from typing import Callable

import torch

from .decoding import DecodeOptions
from .model import InferenceState, KVCache, Transformer
from .vocab import VocabLayout


# ----------------------------------------------------------------------------------------------
# CFG streams
# ----------------------------------------------------------------------------------------------
def image_stream_token(tok: int, vocab: VocabLayout) -> bool:
    """Is ``tok`` kept in the image-only stream I (reference: {image codes, BOS, BOI, EOI})?"""
    return tok in (vocab.bos, vocab.boi, vocab.eoi) or vocab.is_image(tok)


def cfg_streams(prompt: list[int], vocab: VocabLayout, compat: bool = False) -> tuple[list[int], list[int]]:
    """(I, U) prompts for one sequence. U holds the open image span if the prompt ends inside one."""
    image_only = [t for t in prompt if image_stream_token(t, vocab)]
    uncond = [vocab.bos] if compat else []
    for i in range(len(prompt) - 1, -1, -1):
        t = prompt[i]
        if t == vocab.boi:
            uncond += prompt[i:]
            break
        if not vocab.is_image(t):
            break
    return image_only, uncond


# ----------------------------------------------------------------------------------------------
# Decode step: one token per row over the preallocated cache, through the model's own forward
# ----------------------------------------------------------------------------------------------
def decode_step(model: Transformer, tokens: torch.Tensor, pos: torch.Tensor, idx: torch.Tensor,
                key_valid: torch.Tensor | None = None, length: int | None = None,
                span: tuple[int, int] | None = None) -> torch.Tensor:
    """tokens, pos [N, 1]; idx [1]: the cache slot written; attention over slots [0, S) -> logits [N, V].

    With ``key_valid`` [N, S] (bool) only valid slots (and the one written now) are attended; without it,
    ``length`` gives S and every slot below it is visible (no padding, no holes: no mask at all).
    With a full-cache ``key_valid`` the shapes never change, so the step can be captured by
    ``torch.compile(mode="reduce-overhead")`` (CUDA graphs). ``span``: see ``Transformer.head``.
    """
    if key_valid is not None:
        S = key_valid.shape[1]
        mask = (key_valid | (torch.arange(S, device=tokens.device) == idx)).view(tokens.shape[0], 1, 1, S)
    else:
        assert length is not None, "decode_step needs key_valid or length"
        S, mask = int(length), None
    h = model.hidden(tokens, pos, mask, slots=idx, length=S)
    return model.head(h[:, -1], span)


_COMPILED: dict = {}


def compiled_step(device: torch.device) -> Callable:
    """``decode_step`` over the whole cache under torch.compile: CUDA graphs on CUDA (gpt-fast's recipe),
    inductor elsewhere."""
    key = device.type
    if key not in _COMPILED:
        mode = "reduce-overhead" if device.type == "cuda" else "default"
        _COMPILED[key] = torch.compile(decode_step, mode=mode, fullgraph=True, dynamic=False)
    return _COMPILED[key]


# On CPU the compiled whole-cache step only paid off for one row: paired on one thread, the bundled model's step
# ran 1.27x faster compiled at batch 1 and 1.07x at batch 8, the "100m" config's (1024-slot cache) 0.56x at batch 8
# (every row attends over the whole cache). Larger CPU batches decode eagerly.
CPU_COMPILE_MAX_ROWS = 1


def static_step(opts: DecodeOptions, device: torch.device, rows: int) -> bool:
    """Whether ``opts.compile`` decodes ``rows`` streams with the compiled static-shape step on ``device``."""
    return opts.compile and (device.type != "cpu" or rows <= CPU_COMPILE_MAX_ROWS)


# ----------------------------------------------------------------------------------------------
# The cache
# ----------------------------------------------------------------------------------------------
def setup_cache(model: Transformer, batch: int, length: int) -> InferenceState:
    """KV caches of ``length`` slots. Streams start at different slots (left padding, rows that joined later), so a
    batch may need more slots than the context (each stream's positions stay below it); model.setup_cache stops at
    the context."""
    if length <= model.cfg.max_seq_len:
        return model.setup_cache(batch, length)
    w, c = model.tok_embeddings.weight, model.cfg
    for a in model.attentions():
        kv = a.cache
        if kv is None or kv.k.shape[0] < batch or kv.k.shape[2] < length or kv.k.dtype != w.dtype:
            a.cache = KVCache(batch, length, c.n_kv_heads, c.head_dim, w.dtype, w.device)
    return InferenceState(batch, length, w.device)
