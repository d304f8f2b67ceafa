"""One thread owns a model and decodes every request's rows: decode calls that arrive while a batch runs are
merged into the next batch.

A :class:`Batcher` has ``generate``'s signature, so it is attached to an Omni as ``omni.engine`` and the task
functions (tts, asr, caption, t2i, chat) decode through it unchanged. Calls with equal options are merged into
one ``generate`` call (up to ``max_rows`` rows); each row keeps its own seed, so a seeded request gives the same
output alone or beside others. Rows join between batches, not between steps: a row that arrives while a batch
decodes waits for that batch to finish.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from ..generate import Generation, generate


class Cancelled(Exception):
    """Raised in a request's own thread when its client went away; the rows already queued are dropped."""


@dataclass
class _Call:
    model: object
    vocab: object
    prompts: list
    opts: object
    seeds: list
    on_token: Callable | None
    on_finish: Callable | None
    cancel: threading.Event | None
    done: threading.Event = field(default_factory=threading.Event)
    result: Generation | None = None
    error: BaseException | None = None

    def key(self) -> tuple:
        return id(self.model), id(self.vocab), self.opts


@dataclass
class Stats:
    """Counters read by /metrics."""

    queued_rows: int = 0
    running_rows: int = 0
    batches: int = 0
    tokens: int = 0
    decode_s: float = 0.0
    last_tokens_per_s: float = 0.0
    rows: int = 0  # rows decoded, over all batches
    max_rows: int = 0  # the largest batch so far


class Batcher:
    """A decoding thread for one model. ``batcher(model, vocab, prompts, opts, seeds=, on_token=, on_finish=)``
    blocks the calling thread until its rows are decoded and returns their :class:`Generation`."""

    def __init__(self, max_rows: int = 16, cancel_of: Callable[[], threading.Event | None] | None = None):
        self.max_rows = max(1, int(max_rows))
        self.cancel_of = cancel_of or (lambda: None)
        self.stats = Stats()
        self._pending: list[_Call] = []
        self._cv = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="aromni-batcher", daemon=True)
        self._thread.start()

    def __call__(self, model, vocab, prompts: list[list[int]], opts, seeds=None, on_token=None, on_finish=None,
                 static=None) -> Generation:
        cancel = self.cancel_of()
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        seeds = list(seeds) if seeds is not None else [None] * len(prompts)
        call = _Call(model, vocab, [list(p) for p in prompts], opts, seeds, on_token, on_finish, cancel)
        with self._cv:
            if self._stop:
                raise Cancelled()
            self._pending.append(call)
            self.stats.queued_rows += len(prompts)
            self._cv.notify()
        call.done.wait()
        if call.error is not None:
            raise call.error
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        return call.result

    def close(self) -> None:
        """Stop after the running batch; queued calls fail with :class:`Cancelled`."""
        with self._cv:
            self._stop = True
            pending, self._pending = self._pending, []
            self._cv.notify()
        for c in pending:
            c.error = Cancelled()
            c.done.set()
        self._thread.join(timeout=60)

    @property
    def busy(self) -> bool:
        with self._cv:
            return bool(self._pending) or self.stats.running_rows > 0

    # ------------------------------------------------------------------------------------------
    def _take(self) -> list[_Call] | None:
        """The oldest call and every queued call with the same options that fits beside it."""
        with self._cv:
            while not self._pending and not self._stop:
                self._cv.wait()
            if self._stop:
                return None
            first = self._pending.pop(0)
            group, rows, rest = [first], len(first.prompts), []
            for c in self._pending:
                if c.key() == first.key() and rows + len(c.prompts) <= self.max_rows:
                    group.append(c)
                    rows += len(c.prompts)
                else:
                    rest.append(c)
            self._pending = rest
            live = [c for c in group if not (c.cancel is not None and c.cancel.is_set())]
            for c in group:
                if c not in live:
                    c.error = Cancelled()
                    c.done.set()
            n = sum(len(c.prompts) for c in group)
            self.stats.queued_rows -= n
            self.stats.running_rows = sum(len(c.prompts) for c in live)
            return live

    def _loop(self) -> None:
        while True:
            group = self._take()
            if group is None:
                return
            if not group:
                continue
            try:
                self._run(group)
            finally:
                with self._cv:
                    self.stats.running_rows = 0
                for c in group:
                    c.done.set()

    def _run(self, group: list[_Call]) -> None:
        if len(group) == 1:
            self._run_one(group[0])
            return
        first = group[0]
        owner: list[tuple[_Call, int]] = [(c, b) for c in group for b in range(len(c.prompts))]
        failed: set[int] = set()

        def relay(attr: str):
            def cb(row: int, *args) -> None:
                c, b = owner[row]
                fn = getattr(c, attr)
                if fn is None or id(c) in failed:
                    return
                try:
                    fn(b, *args)
                except BaseException as e:  # noqa: BLE001 - one request's callback must not stop the others
                    failed.add(id(c))
                    c.error = e
            return cb

        t0 = time.perf_counter()
        try:
            g = generate(first.model, first.vocab, [p for c in group for p in c.prompts], first.opts,
                         seeds=[s for c in group for s in c.seeds], on_token=relay("on_token"),
                         on_finish=relay("on_finish"))
        except Exception:  # noqa: BLE001 - an input error of one call: decode each call alone to find whose
            for c in group:
                if id(c) not in failed:
                    c.error = None
                    self._run_one(c)
            return
        self._account(g, time.perf_counter() - t0)
        k = 0
        with self._cv:
            self.stats.max_rows = max(self.stats.max_rows, len(owner))
            self.stats.rows += len(owner) - 1  # _account counted one
        for c in group:
            n = len(c.prompts)
            c.result = Generation(g.tokens[k: k + n], g.finish[k: k + n], prompt_tokens=sum(map(len, c.prompts)),
                                  new_tokens=sum(len(t) for t in g.tokens[k: k + n]), prefill_s=g.prefill_s,
                                  decode_s=g.decode_s, first_token_s=g.first_token_s, steps=g.steps)
            k += n

    def _run_one(self, c: _Call) -> None:
        t0 = time.perf_counter()
        try:
            g = generate(c.model, c.vocab, c.prompts, c.opts, seeds=c.seeds, on_token=c.on_token,
                         on_finish=c.on_finish)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            c.error = e
            return
        self._account(g, time.perf_counter() - t0)
        c.result = g

    def _account(self, g: Generation, wall: float) -> None:
        with self._cv:
            self.stats.batches += 1
            self.stats.rows += 1
            self.stats.max_rows = max(self.stats.max_rows, 1)
            self.stats.tokens += g.new_tokens
            self.stats.decode_s += wall
            self.stats.last_tokens_per_s = g.new_tokens / wall if wall > 0 else 0.0
