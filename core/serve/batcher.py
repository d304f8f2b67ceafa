"""One thread owns a model and its decoding :class:`~aromni.core.engine.Engine`: decode calls that arrive while
others decode join the running batch at its next step, and each row leaves as soon as it finishes.

A :class:`Batcher` has ``generate``'s signature, so it is attached to an Omni as ``omni.engine`` and the task
functions (tts, asr, caption, t2i, chat) decode through it unchanged. Between two steps the thread admits the
queued calls (up to ``max_rows`` live rows; calls of any options share steps), drops the rows of requests whose
client went away, and hands finished calls their :class:`Generation`. Each row keeps its own seed, so a seeded
request gives the same output alone or beside others. An engine on the compiled static step
(``static_step``) keeps one shape per batch: calls join it between batches. ``join="batch"`` makes every call
wait for an idle engine (batch-level joining: calls with equal options merged into the next batch).
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..engine import Engine, Generation, Request
from ..model import Transformer


class Cancelled(Exception):
    """Raised in a request's own thread when its client went away; its rows are dropped."""


@dataclass
class _Call:
    req: Request
    model: Transformer
    cancel: threading.Event | None
    static: bool | None
    done: threading.Event = field(default_factory=threading.Event)
    result: Generation | None = None
    error: BaseException | None = None

    @property
    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()

    def key(self) -> tuple:
        return id(self.model), id(self.req.vocab), self.req.opts


@dataclass
class Stats:
    """Counters read by /metrics."""

    queued_rows: int = 0
    running_rows: int = 0
    batches: int = 0  # decoding steps
    tokens: int = 0
    decode_s: float = 0.0
    last_tokens_per_s: float = 0.0
    rows: int = 0  # rows decoded, summed over steps (rows / batches: the mean batch size)
    max_rows: int = 0  # the most rows in one step so far


class Batcher:
    """A decoding thread for one model. ``batcher(model, vocab, prompts, opts, seeds=, on_token=, on_finish=)``
    blocks the calling thread until its rows are decoded and returns their :class:`Generation`."""

    def __init__(self, max_rows: int = 16, cancel_of: Callable[[], threading.Event | None] | None = None,
                 join: str = "step"):
        if join not in ("step", "batch"):
            raise ValueError(f"join must be 'step' or 'batch' (got {join!r})")
        self.max_rows = max(1, int(max_rows))
        self.cancel_of = cancel_of or (lambda: None)
        self.join = join
        self.stats = Stats()
        self._pending: list[_Call] = []
        self._running: list[_Call] = []
        self._engine: Engine | None = None
        self._recent: deque = deque()  # (time, tokens) of the last second's steps
        self._cv = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="aromni-batcher", daemon=True)
        self._thread.start()

    def __call__(self, model, vocab, prompts: list[list[int]], opts, seeds=None, on_token=None, on_finish=None,
                 static=None) -> Generation:
        cancel = self.cancel_of()
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        if not prompts:
            return Generation([], [])
        call = _Call(Request(model, vocab, prompts, opts, seeds, on_token, on_finish), model, cancel, static)
        with self._cv:
            if self._stop:
                raise Cancelled()
            self._pending.append(call)
            self.stats.queued_rows += len(prompts)
            self._cv.notify()
        call.done.wait()
        if call.error is not None:
            raise call.error
        if call.cancelled:
            raise Cancelled()
        assert call.result is not None  # _settle sets it when the call ends without an error
        return call.result

    def close(self) -> None:
        """Stop admitting: queued calls fail with :class:`Cancelled`, running ones decode to their end."""
        with self._cv:
            self._stop = True
            pending, self._pending = self._pending, []
            self.stats.queued_rows = 0
            self._cv.notify()
        for c in pending:
            c.error = Cancelled()
            c.done.set()
        self._thread.join(timeout=60)

    @property
    def cache_rows(self) -> int:
        """KV cache rows held by live streams (a CFG row holds three)."""
        with self._cv:
            return self._engine.cache_rows if self._engine is not None else 0

    @property
    def busy(self) -> bool:
        with self._cv:
            return bool(self._pending) or bool(self._running)

    # ------------------------------------------------------------------------------------------
    def _take(self) -> list[_Call] | None:
        """The queued calls to admit now (None: stop). Waits while there is nothing to do."""
        with self._cv:
            while not self._pending and not self._running and not self._stop:
                self._cv.wait()
            if self._stop and not self._running:
                return None
            eng = self._engine
            idle = eng is None or eng.idle
            if self.join == "batch" and not idle:
                return []
            live = eng.live_rows if eng is not None else 0
            take: list[_Call] = []
            rest: list[_Call] = []
            rows = live
            for c in self._pending:
                n = len(c.req.rows)
                if c.cancelled:
                    c.error = Cancelled()
                    c.done.set()
                    self.stats.queued_rows -= n
                    continue
                fits = rows + n <= self.max_rows or (idle and not take)
                if self.join == "batch":
                    ok = fits and (not take or c.key() == take[0].key())
                else:  # first come, first served: a call that cannot join now holds the ones behind it
                    ok = (fits and not rest
                          and (idle or (eng is not None and c.model is eng.model and eng.accepts(c.req.opts)))
                          and (not take or c.model is take[0].model))
                if ok:
                    take.append(c)
                    rows += n
                    self.stats.queued_rows -= n
                else:
                    rest.append(c)
            self._pending = rest
            return take

    @torch.no_grad()
    def _loop(self) -> None:
        while True:
            take = self._take()
            if take is None:
                return
            t0 = time.perf_counter()
            if take:
                self._admit(take)
            ended: list[Request] = []
            tokens = 0
            if self._engine is not None and not self._engine.idle:
                before = sum(c.req.gen.new_tokens for c in self._running)
                live = self._engine.live_rows
                try:
                    ended = self._engine.step()
                except Exception as e:  # noqa: BLE001 - the engine's own failure fails every running call
                    for c in self._running:
                        c.req.error = e
                    ended = [c.req for c in self._running]
                    self._engine = None
                tokens = sum(c.req.gen.new_tokens for c in self._running) - before
                self._account(live, tokens, time.perf_counter() - t0)
            self._settle(ended)

    def _admit(self, take: list[_Call]) -> None:
        model = take[0].model
        if self._engine is None or (self._engine.idle and self._engine.model is not model):
            self._engine = Engine(model)
        try:
            self._engine.admit([c.req for c in take], take[0].static)
        except Exception as e:  # noqa: BLE001 - e.g. out of memory: these calls fail, the running ones go on
            for c in take:
                c.req.error = e
                c.req.finished = True
            if self._engine.idle:
                self._engine = None
        with self._cv:
            self._running += take
        self._settle([c.req for c in take if c.req.finished])

    def _settle(self, ended: list[Request]) -> None:
        """Hand ended calls their results; drop the rows of calls whose client went away."""
        done = {id(r) for r in ended}
        for c in self._running:
            if id(c.req) not in done and c.cancelled:
                assert self._engine is not None  # a running call that has not ended has rows in the engine
                self._engine.cancel(c.req)
                c.req.error = Cancelled()
                done.add(id(c.req))
        if not done:
            return
        with self._cv:
            finished = [c for c in self._running if id(c.req) in done]
            self._running = [c for c in self._running if id(c.req) not in done]
            self.stats.running_rows = self._engine.live_rows if self._engine is not None else 0
        for c in finished:
            c.error, c.result = c.req.error, c.req.gen
            c.done.set()

    def _account(self, rows: int, tokens: int, wall: float) -> None:
        now = time.perf_counter()
        with self._cv:
            s = self.stats
            s.batches += 1
            s.rows += rows
            s.max_rows = max(s.max_rows, rows)
            s.tokens += tokens
            s.decode_s += wall
            s.running_rows = self._engine.live_rows if self._engine is not None else 0
            self._recent.append((now, tokens))
            while self._recent and now - self._recent[0][0] > 1.0:
                self._recent.popleft()
            span = now - self._recent[0][0] + wall if self._recent else 0.0
            s.last_tokens_per_s = sum(t for _, t in self._recent) / span if span > 0 else 0.0
