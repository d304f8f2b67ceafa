"""The decoding loop: prefill once, then one token per step for a whole batch, over one KV cache.

Rows are left-padded into one cache and advance in lockstep; a row that finishes early is fed ``<pad>`` and
ignored. Switching between text, image and speech only changes masks and strategy (decoding.Policy): the cache
is never rebuilt, unlike the reference, which re-prefills the whole context at every switch.

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

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from .decoding import IMAGE, Chooser, DecodeOptions, Policy, Row, initial_mode, options_for
from .errors import InputError
from .model import InferenceState, KVCache, Transformer
from .vocab import VocabLayout


@dataclass
class Generation:
    """Generated ids per row (forced tokens included, prompt excluded) and timings."""

    tokens: list[list[int]]
    finish: list[str]
    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    first_token_s: float = 0.0
    steps: int = 0
    extra: dict = field(default_factory=dict)
    # per row, per token: the chosen token's log-probability (None where it was forced); see decoding.Row
    logprobs: list[list[float | None]] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.decode_s if self.decode_s > 0 else 0.0


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
# The loop
# ----------------------------------------------------------------------------------------------
def setup_cache(model: Transformer, batch: int, length: int) -> InferenceState:
    """KV caches of ``length`` slots. Rows are left-padded to the longest prompt, so a batch may need more slots
    than the context (each row's positions stay below it); model.setup_cache stops at the context."""
    if length <= model.cfg.max_seq_len:
        return model.setup_cache(batch, length)
    w, c = model.tok_embeddings.weight, model.cfg
    for layer in model.layers:
        kv = layer.attention.cache
        if kv is None or kv.k.shape[0] < batch or kv.k.shape[2] < length or kv.k.dtype != w.dtype:
            layer.attention.cache = KVCache(batch, length, c.n_kv_heads, c.head_dim, w.dtype, w.device)
    return InferenceState(batch, length, w.device)


def _left_pad(seqs: list[list[int]], pad_id: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    out = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    pads = torch.zeros(len(seqs), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            out[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        pads[i] = width - len(s)
    return out, pads


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
    B = len(prompts)
    if B == 0:
        return Generation([], [])
    seeds = list(seeds) if seeds is not None else [None] * B
    if len(seeds) != B:
        raise ValueError("one seed per prompt")
    dev = model.tok_embeddings.weight.device
    ctx = model.cfg.max_seq_len
    for p in prompts:
        if not p:
            raise InputError("empty prompt")
        bad = [t for t in p if not 0 <= t < vocab.vocab_size]
        if bad:
            raise InputError(f"token {bad[0]} is outside the vocabulary (0..{vocab.vocab_size - 1})")
    t0 = time.perf_counter()

    # --- rows and streams ------------------------------------------------------------------------
    policy = Policy(vocab, opts)
    modes = [initial_mode(p, vocab)[0] for p in prompts]
    use_cfg = opts.use_cfg and (opts.images or IMAGE in modes)
    streams = [list(p) for p in prompts]
    holes: list[list[int]] = [[] for _ in prompts]  # per stream: prompt offsets that are holes
    if use_cfg:
        iu = [cfg_streams(p, vocab, opts.compat) for p in prompts]
        for k in (0, 1):
            for s in iu:
                streams.append(s[k] if s[k] else [vocab.pad])  # an empty stream holds one hole
                holes.append([] if s[k] else [0])
    S = 3 if use_cfg else 1
    N = len(streams)
    P = max(len(s) for s in streams)
    if P >= ctx:
        raise InputError(f"prompt of {P} tokens does not fit the model's context of {ctx} tokens")
    rows: list[Row] = []
    for p, mode in zip(prompts, modes):
        budget = min(opts.max_new_tokens, ctx - len(p))  # positions restart at 0 in every row
        if opts.max_total_tokens is not None:
            budget = min(budget, opts.max_total_tokens - len(p))
        row = policy.new_row(p, max(budget, 0))
        if budget <= 0:
            row.done, row.finish = True, "length"
        elif mode == IMAGE and budget < vocab.image_tokens - row.count + 1 and not opts.compat:
            raise InputError(f"no room for an image of {vocab.image_tokens} tokens after a prompt of {len(p)} "
                             f"tokens (context {ctx}, max new tokens {opts.max_new_tokens})")
        rows.append(row)
    max_new = max(r.budget for r in rows)
    static = static_step(opts, dev, N) if static is None else static
    max_len = P + max_new + 1
    if static:  # one cache shape for every call (CUDA graphs), unless a batch needs more
        max_len = max(max_len, ctx)
    tokens, pads = _left_pad(streams, vocab.pad, P)
    state = setup_cache(model, N, max_len)
    state.reset(pad=pads.to(dev))
    key_valid = torch.zeros(N, state.max_len, dtype=torch.bool)
    npos = [0] * N  # per stream: positions used so far (holes take none)
    for n, s in enumerate(streams):
        key_valid[n, P - len(s): P] = True
        for h in holes[n]:
            key_valid[n, P - len(s) + h] = False
        npos[n] = len(s) - len(holes[n])
    # compat: U restarts at <boi> but keeps its <bos> (when the stream has one, i.e. no hole in front)
    keep_first = [opts.compat and 0 not in holes[n] for n in range(N)]
    key_valid = key_valid.to(dev)  # the prefill needs no holes mask: a hole is only ever a stream's last token

    chooser = Chooser(vocab, opts, rows, prompts, seeds, dev)
    gen = Generation([r.out for r in rows], [r.finish for r in rows],
                     prompt_tokens=sum(len(p) for p in prompts), logprobs=[r.logprobs for r in rows])

    # --- prefill -------------------------------------------------------------------------------
    logits = model(tokens.to(dev), state, last_only=True)[:, -1]  # [N, V]
    t1 = time.perf_counter()
    gen.prefill_s = t1 - t0
    step_fn = compiled_step(dev) if (static and opts.compile) else decode_step
    need_mask = bool(pads.any()) or use_cfg  # else every cached slot below the current one is visible
    idx = torch.zeros(1, dtype=torch.long, device=dev)

    # --- decode --------------------------------------------------------------------------------
    first = True
    while not all(r.done for r in rows):
        was_image = [r.mode == IMAGE for r in rows]
        cfg = (logits[B:2 * B], logits[2 * B:]) if use_cfg else None
        out = chooser.choose(logits[:B], cfg)
        if first:
            gen.first_token_s = time.perf_counter() - t0
            first = False
        feed = [vocab.pad] * N
        L = state.length
        for b, t in enumerate(out):
            if t is None:
                continue
            gen.new_tokens += 1
            if on_token is not None:
                on_token(b, t)
            for k in range(S):
                feed[k * B + b] = t
        if on_finish is not None:
            for b, t in enumerate(out):
                if t is not None and rows[b].done:
                    on_finish(b)
        if all(r.done for r in rows) or L >= state.max_len:
            break
        # validity of the fed token in each stream; positions count only valid tokens
        vmask = [False] * N
        pos = list(npos)
        for b, t in enumerate(out):
            if t is None:
                continue
            vmask[b] = True
            if use_cfg:
                vmask[B + b] = image_stream_token(t, vocab)
                u = 2 * B + b
                if t == vocab.boi:  # U restarts: only (<bos>,) <boi> and this image's codes
                    first_u = P - len(streams[u])
                    key_valid[u, :L] = False
                    if keep_first[u]:
                        key_valid[u, first_u] = True
                    npos[u] = pos[u] = int(keep_first[u])
                    vmask[u] = True
                else:
                    vmask[u] = was_image[b] and vocab.is_image(t)
        for n in range(N):
            npos[n] += vmask[n]
        # one host -> device copy per step: fed tokens, their positions, their validity
        step_in = torch.tensor([feed, [min(q, ctx - 1) for q in pos], vmask], dtype=torch.long).to(dev)
        feed_t, pos_t = step_in[0].view(N, 1), step_in[1].view(N, 1)
        key_valid[:, L] = step_in[2].bool()
        idx.fill_(L)
        if static:
            logits = step_fn(model, feed_t, pos_t, idx, key_valid)
        else:
            logits = step_fn(model, feed_t, pos_t, idx, key_valid[:, :L + 1] if need_mask else None, L + 1,
                             chooser.span())
        state.length += 1
        gen.steps += 1
    gen.decode_s = time.perf_counter() - t1
    if on_finish is not None:
        for b, r in enumerate(rows):
            if not r.done or not r.out:  # cut by the cache, or no room at all
                on_finish(b)
    gen.finish = [r.finish or "length" for r in rows]
    return gen
