"""The step-level decoding engine: one KV cache whose rows requests take and give back between steps.

An :class:`Engine` owns a model's KV cache. Every cache row holds one *stream* (a sequence, or one of its CFG
streams); all streams share one write index ``L`` and each keeps its own positions and key-validity mask, so a
stream may start at any slot. ``admit`` prefills requests: into an idle engine their streams are left-padded
into rows ``0..N`` (exactly one ``generate`` batch); into a running one they are prefilled apart and their
keys copied right-aligned to end at ``L``, so they decode from the next step on. ``step`` picks one token for
every live row and runs one forward over all streams. A row leaves when it finishes and frees its cache rows;
when ``L`` reaches the cache end, the slots no live stream uses are cut off the front, or the cache grows.

Each request keeps its own options, :class:`~aromni.core.decoding.Chooser` (per-row generators) and callbacks, so
requests of different tasks share steps and a seeded row gives the same tokens whatever decodes beside it.

The compiled static step keeps one shape for the whole batch: an engine that uses it admits only when idle.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from .decoding import IMAGE, Chooser, DecodeOptions, Policy, Row, initial_mode
from .errors import InputError
from .model import InferenceState, KVCache, Transformer
from .step import cfg_streams, compiled_step, decode_step, image_stream_token, setup_cache, static_step
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


class Request:
    """One decode call: its rows (sequences), their streams and, once done, its :class:`Generation`.

    Stream ``k * B + b`` is stream k (0: full context, 1: image-only, 2: unconditional) of row b."""

    def __init__(self, model: Transformer, vocab: VocabLayout, prompts: list[list[int]], opts: DecodeOptions,
                 seeds: list[int | None] | None = None, on_token: Callable[[int, int], None] | None = None,
                 on_finish: Callable[[int], None] | None = None):
        self.t0 = time.perf_counter()
        B = len(prompts)
        seeds = list(seeds) if seeds is not None else [None] * B
        if len(seeds) != B:
            raise ValueError("one seed per prompt")
        ctx = model.cfg.max_seq_len
        for p in prompts:
            if not p:
                raise InputError("empty prompt")
            bad = [t for t in p if not 0 <= t < vocab.vocab_size]
            if bad:
                raise InputError(f"token {bad[0]} is outside the vocabulary (0..{vocab.vocab_size - 1})")
        self.vocab, self.opts, self.B = vocab, opts, B
        self.on_token, self.on_finish = on_token, on_finish
        modes = [initial_mode(p, vocab)[0] for p in prompts]
        self.use_cfg = opts.use_cfg and (opts.images or IMAGE in modes)
        streams = [list(p) for p in prompts]
        holes: list[list[int]] = [[] for _ in prompts]  # per stream: prompt offsets that are holes
        if self.use_cfg:
            iu = [cfg_streams(p, vocab, opts.compat) for p in prompts]
            for k in (0, 1):
                for s in iu:
                    streams.append(s[k] if s[k] else [vocab.pad])  # an empty stream holds one hole
                    holes.append([] if s[k] else [0])
        self.S = 3 if self.use_cfg else 1
        self.streams, self.holes = streams, holes
        self.width = max(len(s) for s in streams)
        if self.width >= ctx:
            raise InputError(f"prompt of {self.width} tokens does not fit the model's context of {ctx} tokens")
        policy = Policy(vocab, opts)
        self.rows: list[Row] = []
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
            self.rows.append(row)
        self.npos = [len(s) - len(h) for s, h in zip(streams, holes)]  # positions used so far (holes take none)
        # compat: U restarts at <boi> but keeps its <bos> (when the stream has one, i.e. no hole in front)
        self.keep_first = [opts.compat and 0 not in h for h in holes]
        self.prompts, self.seeds = prompts, seeds
        self.chooser: Chooser | None = None
        self.slots: list[int | None] = [None] * len(streams)  # cache row of each stream (None: freed)
        self.start = [0] * len(streams)  # slot of each stream's first prompt token
        self.logits: torch.Tensor | None = None  # [streams, V] for the next choice
        self.gen = Generation([r.out for r in self.rows], [r.finish for r in self.rows],
                              prompt_tokens=sum(len(p) for p in prompts), logprobs=[r.logprobs for r in self.rows])
        self.error: BaseException | None = None
        self.finished = False
        self.t1 = self.t0

    @property
    def live_rows(self) -> int:
        return sum(not r.done for r in self.rows)

    def valid_prefix(self, n: int) -> torch.Tensor:
        """[width] bool: which of the left-padded prompt slots stream ``n`` attends."""
        s, v = self.streams[n], torch.zeros(self.width, dtype=torch.bool)
        v[self.width - len(s):] = True
        for h in self.holes[n]:
            v[self.width - len(s) + h] = False
        return v


class Engine:
    """Decodes the rows of any number of :class:`Request` over one model's KV cache, one token per step."""

    def __init__(self, model: Transformer):
        self.model = model
        self.dev = model.tok_embeddings.weight.device
        self.ctx = model.cfg.max_seq_len
        self.requests: list[Request] = []
        self.owner: list[tuple[Request, int] | None] = []  # per cache row in use: (request, stream)
        self.key_valid = torch.zeros(0, 0, dtype=torch.bool, device=self.dev)  # [rows, T]
        self.L = 0  # next slot written
        self.T = 0  # slots usable
        self.static = False
        self.dense = False  # every stream starts at slot 0 without holes: steps attend without a mask
        self.steps = 0
        self._idx = torch.zeros(1, dtype=torch.long, device=self.dev)

    # -- state ------------------------------------------------------------------------------------
    @property
    def idle(self) -> bool:
        return not self.requests

    @property
    def live_rows(self) -> int:
        """Rows (sequences) still decoding."""
        return sum(r.live_rows for r in self.requests)

    @property
    def cache_rows(self) -> int:
        """Cache rows held by live streams."""
        return sum(o is not None for o in self.owner)

    def accepts(self, opts: DecodeOptions) -> bool:
        """Whether a request with ``opts`` may join now (an engine on the static step admits only when idle)."""
        return self.idle or not (self.static or static_step(opts, self.dev, 1 + len(self.owner)))

    # -- admission --------------------------------------------------------------------------------
    def admit(self, reqs: list[Request], static: bool | None = None) -> None:
        """Prefill ``reqs`` and make their rows decode from the next step. Into an idle engine: one left-padded
        batch, decoded with the static step when ``static`` (default: ``static_step`` of the first request's
        options); into a running one: prefilled apart and placed in free cache rows ending at ``L``."""
        t0 = time.perf_counter()
        for r in reqs:
            r.t0 = t0
        reqs = [r for r in reqs if not self._finish_if_empty(r)]
        if not reqs:
            return
        if self.idle:
            self._start(reqs, static)
        else:
            self._join(reqs)
        for r in reqs:
            r.chooser = Chooser(r.vocab, r.opts, r.rows, r.prompts, r.seeds, self.dev)
            r.t1 = time.perf_counter()
            r.gen.prefill_s = r.t1 - r.t0
            self.requests.append(r)

    def _finish_if_empty(self, r: Request) -> bool:
        if r.live_rows:
            return False
        self._close(r)
        return True

    @staticmethod
    def _batch(reqs: list[Request], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """Every stream of ``reqs`` left-padded to one width: tokens [N, P], pads [N], validity [N, P]."""
        P = max(r.width for r in reqs)
        seqs = [s for r in reqs for s in r.streams]
        tokens = torch.full((len(seqs), P), pad, dtype=torch.long)
        pads = torch.tensor([P - len(s) for s in seqs], dtype=torch.long)
        for i, s in enumerate(seqs):
            tokens[i, P - len(s):] = torch.tensor(s, dtype=torch.long)
        valid = torch.zeros(len(seqs), P, dtype=torch.bool)
        i = 0
        for r in reqs:
            for n in range(len(r.streams)):
                valid[i, P - r.width:] = r.valid_prefix(n)
                i += 1
        return tokens, pads, valid, P

    def _start(self, reqs: list[Request], static: bool | None) -> None:
        tokens, pads, valid, P = self._batch(reqs, reqs[0].vocab.pad)
        N = tokens.shape[0]
        self.static = static_step(reqs[0].opts, self.dev, N) if static is None else static
        max_len = P + max(r.budget for q in reqs for r in q.rows) + 1
        if self.static:  # one cache shape for every call (CUDA graphs), unless a batch needs more
            max_len = max(max_len, self.ctx)
        state = setup_cache(self.model, N, max_len)
        state.reset(pad=pads.to(self.dev))
        self.T, self.L = state.max_len, P
        self.key_valid = torch.zeros(N, self.T, dtype=torch.bool)
        self.key_valid[:, :P] = valid
        self.key_valid = self.key_valid.to(self.dev)
        self.dense = not bool(pads.any()) and not any(r.use_cfg for r in reqs)
        self.owner = []
        logits = self.model(tokens.to(self.dev), state, last_only=True)[:, -1]  # [N, V]
        self._place(reqs, list(range(N)), P, logits)

    def _join(self, reqs: list[Request]) -> None:
        tokens, pads, valid, P = self._batch(reqs, reqs[0].vocab.pad)
        N = tokens.shape[0]
        layers = self.model.attentions()
        main = self._caches()
        c, w = self.model.cfg, self.model.tok_embeddings.weight
        scratch = [KVCache(N, P, c.n_kv_heads, c.head_dim, main[0].k.dtype, self.dev) for _ in layers]
        try:  # the prefill writes to the layers' caches: lend it a cache of its own
            for a, kv in zip(layers, scratch):
                a.cache = kv
            state = InferenceState(N, P, w.device)
            state.reset(pad=pads.to(self.dev))
            logits = self.model(tokens.to(self.dev), state, last_only=True)[:, -1]
        finally:
            for a, kv in zip(layers, main):
                a.cache = kv
        free = [i for i, o in enumerate(self.owner) if o is None]
        slots = (free + list(range(len(self.owner), len(self.owner) + N)))[:N]
        self._reserve(max(slots) + 1, max(P, self.L) + 1)
        if self.L < P:  # room in front for the longest prompt
            self._shift(P - self.L)
        at = torch.tensor(slots, device=self.dev)
        for cache, kv in zip(self._caches(), scratch):  # (_reserve may have replaced the caches)
            cache.k[:, :, self.L - P: self.L].index_copy_(0, at, kv.k)
            cache.v[:, :, self.L - P: self.L].index_copy_(0, at, kv.v)
        self.key_valid[at] = False
        self.key_valid[at, self.L - P: self.L] = valid.to(self.dev)
        self.dense = False
        self._place(reqs, slots, self.L, logits)

    def _place(self, reqs: list[Request], slots: list[int], end: int, logits: torch.Tensor) -> None:
        """Record the cache rows of the streams of ``reqs`` (in order), prompts ending at slot ``end``."""
        while len(self.owner) < max(slots) + 1:
            self.owner.append(None)
        i = 0
        for r in reqs:
            n0 = i
            for n, s in enumerate(r.streams):
                r.slots[n], r.start[n] = slots[i], end - len(s)
                self.owner[slots[i]] = (r, n)
                i += 1
            r.logits = logits[n0:i]

    # -- cache ------------------------------------------------------------------------------------
    def _caches(self) -> list[KVCache]:
        """Every layer's KV cache (``_start`` allocates them before any request is admitted)."""
        caches = []
        for a in self.model.attentions():
            assert a.cache is not None
            caches.append(a.cache)
        return caches

    def _reserve(self, rows: int, length: int) -> None:
        """Cache of at least ``rows`` rows and ``length`` slots (contents kept)."""
        kv0 = self._caches()[0]
        R, T = kv0.k.shape[0], kv0.k.shape[2]
        if rows > R or length > T:
            c = self.model.cfg
            R2, T2 = max(rows, R), max(length, T)
            n, L = len(self.owner), self.L
            for a, old in zip(self.model.attentions(), self._caches()):
                new = KVCache(R2, T2, c.n_kv_heads, c.head_dim, old.k.dtype, self.dev)
                new.k[:n, :, :L] = old.k[:n, :, :L]
                new.v[:n, :, :L] = old.v[:n, :, :L]
                a.cache = new
        kr, kt = self.key_valid.shape
        if rows > kr or length > kt:
            kv = torch.zeros(max(rows, kr), max(length, kt), dtype=torch.bool, device=self.dev)
            kv[:kr, :kt] = self.key_valid
            self.key_valid = kv
        self.T = max(self.T, length)

    def _shift(self, d: int) -> None:
        """Move every stream's slots by ``d`` (> 0: later, < 0: earlier); ``L`` moves with them."""
        n, L = len(self.owner), self.L
        src, dst = (0, d) if d > 0 else (-d, 0)
        width = L - src
        for cache in self._caches():
            for t in (cache.k, cache.v):
                t[:n, :, dst: dst + width] = t[:n, :, src: src + width].clone()
        kv = self.key_valid[:n, src: src + width].clone()
        self.key_valid[:n] = False
        self.key_valid[:n, dst: dst + width] = kv
        self.L += d
        for r in self.requests:
            r.start = [s + d for s in r.start]

    def _room(self) -> None:
        """Make slot ``L`` writable: drop the slots in front that no live stream attends, else grow."""
        if self.L < self.T:
            return
        n = len(self.owner)
        used = self.key_valid[:n, : self.L].any(dim=0).nonzero()
        first = int(used[0]) if len(used) else self.L
        if first >= max(1, self.L // 4):  # worth a copy
            self._shift(-first)
        if self.L >= self.T:
            left = max((r.budget for q in self.requests for r in q.rows if not r.done), default=1)
            self._reserve(n, self.L + max(left, 16) + 1)

    def _pack(self) -> None:
        """Move the last streams into free cache rows below them, so rows ``0..n`` are all live."""
        dst = 0
        while True:
            while self.owner and self.owner[-1] is None:
                self.owner.pop()
            while dst < len(self.owner) and self.owner[dst] is not None:
                dst += 1
            src = len(self.owner) - 1
            if dst >= src:
                return
            for kv in self._caches():
                kv.k[dst] = kv.k[src]
                kv.v[dst] = kv.v[src]
            self.key_valid[dst] = self.key_valid[src]
            o = self.owner[src]
            assert o is not None  # the free rows at the end were popped
            r, s = o
            r.slots[s] = dst
            self.owner[dst], self.owner[src] = (r, s), None

    def _free(self, r: Request, rows: list[int]) -> None:
        for b in rows:
            for k in range(r.S):
                n = k * r.B + b
                slot = r.slots[n]
                if slot is not None:
                    self.owner[slot] = None
                    r.slots[n] = None

    # -- decoding ---------------------------------------------------------------------------------
    def step(self) -> list[Request]:
        """Choose one token for every live row, then run one forward over every live stream. Returns the
        requests that ended (finished, or failed in a callback: ``Request.error``)."""
        ended: list[Request] = []
        feed: dict[tuple[int, int], tuple[int, int, bool]] = {}  # (request id, stream) -> (token, position, attended)
        for r in list(self.requests):
            try:
                self._choose(r, feed)
            except Exception as e:  # noqa: BLE001 - a callback's error ends its own request only (Ctrl-C ends all)
                r.error = e
            if r.error is not None or not r.live_rows:
                self._retire(r)
                ended.append(r)
        if not self.requests:
            return ended
        if not self.static:
            self._pack()
            self._room()
        n, L = len(self.owner), self.L
        pad = self.requests[0].vocab.pad
        cols = [feed.get((id(o[0]), o[1]), (pad, 0, False)) if o is not None else (pad, 0, False)
                for o in self.owner]
        step_in = torch.tensor([[c[0] for c in cols], [min(c[1], self.ctx - 1) for c in cols],
                                [c[2] for c in cols]], dtype=torch.long).to(self.dev)
        tok, pos = step_in[0].view(n, 1), step_in[1].view(n, 1)
        self.key_valid[:n, L] = step_in[2].bool()
        self._idx.fill_(L)
        if self.static:
            step_fn = compiled_step(self.dev) if self.requests[0].opts.compile else decode_step
            logits = step_fn(self.model, tok, pos, self._idx, self.key_valid[:n, : self.T])
        else:
            logits = decode_step(self.model, tok, pos, self._idx, None if self.dense else self.key_valid[:n, :L + 1],
                                 L + 1, self._span())
        self.L += 1
        self.steps += 1
        for r in self.requests:
            r.gen.steps += 1
            s = [x if x is not None else 0 for x in r.slots]
            if s == list(range(s[0], s[0] + len(s))):
                r.logits = logits[s[0]: s[0] + len(s)]
            else:
                r.logits = logits.index_select(0, torch.tensor(s, device=self.dev))
        return ended

    def _span(self) -> tuple[int, int] | None:
        """The vocabulary span every request's next choice needs (None: the whole head)."""
        lo: int | None = None
        hi = 0
        for r in self.requests:
            assert r.chooser is not None  # admitted
            sp = r.chooser.span()
            if sp is None:
                return None
            if sp == (0, 1):  # no row of it looks at the logits
                continue
            lo, hi = (sp[0], sp[1]) if lo is None else (min(lo, sp[0]), max(hi, sp[1]))
        return (0, 1) if lo is None else (lo, hi)

    def _choose(self, r: Request, feed: dict[tuple[int, int], tuple[int, int, bool]]) -> None:
        """One token per live row of ``r``; callbacks; the tokens each of its streams is fed next."""
        v, B, lg = r.vocab, r.B, r.logits
        assert r.chooser is not None and lg is not None  # admitted: _place gave it logits
        was_image = [row.mode == IMAGE for row in r.rows]
        out = r.chooser.choose(lg[:B], (lg[B:2 * B], lg[2 * B:]) if r.use_cfg else None)
        if not r.gen.first_token_s:
            r.gen.first_token_s = time.perf_counter() - r.t0
        for b, t in enumerate(out):
            if t is None:
                continue
            r.gen.new_tokens += 1
            if r.on_token is not None:
                r.on_token(b, t)
        ended = [b for b, t in enumerate(out) if t is not None and r.rows[b].done]
        if r.on_finish is not None:
            for b in ended:
                r.on_finish(b)
        if not r.live_rows:
            return
        if not self.static:  # rows leave as they finish (the static step keeps its shape: they idle)
            self._free(r, ended)
        L = self.L
        for b, t in enumerate(out):
            if t is None or r.slots[b] is None:
                continue
            feed[(id(r), b)] = (t, r.npos[b], True)
            r.npos[b] += 1
            if not r.use_cfg:
                continue
            i, u = B + b, 2 * B + b
            vi = image_stream_token(t, v)
            feed[(id(r), i)] = (t, r.npos[i], vi)
            r.npos[i] += vi
            su = r.slots[u]
            if t == v.boi:  # U restarts: only (<bos>,) <boi> and this image's codes
                self.key_valid[su, :L] = False
                if r.keep_first[u]:
                    self.key_valid[su, r.start[u]] = True
                p = int(r.keep_first[u])
                feed[(id(r), u)] = (t, p, True)
                r.npos[u] = p + 1
            else:
                vu = was_image[b] and v.is_image(t)
                feed[(id(r), u)] = (t, r.npos[u], vu)
                r.npos[u] += vu
        # the rows that idle (static step) are fed <pad>, unattended
        for b, t in enumerate(out):
            if t is None and r.slots[b] is not None:
                for k in range(r.S):
                    feed[(id(r), k * B + b)] = (v.pad, r.npos[k * B + b], False)

    def _retire(self, r: Request) -> None:
        self.requests.remove(r)
        self._free(r, list(range(r.B)))
        if not self.requests:
            self.owner = []
        if r.error is None:
            self._close(r)
        r.finished = True

    def _close(self, r: Request) -> None:
        r.gen.decode_s = time.perf_counter() - r.t1
        if r.on_finish is not None:
            for b, row in enumerate(r.rows):
                if not row.done or not row.out:  # no room at all
                    r.on_finish(b)
        r.gen.finish = [row.finish or "length" for row in r.rows]
        r.finished = True

    def cancel(self, r: Request) -> None:
        """Drop ``r``'s rows now (no more callbacks); their cache rows are free for the next step."""
        if r in self.requests:
            self.requests.remove(r)
            self._free(r, list(range(r.B)))
            if not self.requests:
                self.owner = []
        r.finished = True
