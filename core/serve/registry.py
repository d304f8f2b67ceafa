"""Models by name: loaded at start or on first use, each with its own :class:`Batcher`, unloaded after
``keep_alive_s`` without requests."""
from __future__ import annotations

import gc
import os
import sys
import threading
import time
from dataclasses import dataclass, field

from ..bundle import Omni
from ..errors import AromniError
from .batcher import Batcher
from .config import ServeConfig
from .runner import current_cancel

DEFAULT_NAME = "default"


class UnknownModel(AromniError):
    """A model name the server does not serve."""


@dataclass
class Entry:
    name: str
    spec: str | None  # what api.load gets (None: the bundled model)
    omni: Omni | None = None
    batcher: Batcher | None = None
    users: int = 0
    last_used: float = field(default_factory=time.monotonic)
    loaded_at: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class Registry:
    def __init__(self, cfg: ServeConfig, log=None):
        self.cfg = cfg
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        specs: list[str | None] = list(cfg.models) or [None]
        self.entries: dict[str, Entry] = {}
        for s in specs:
            name = DEFAULT_NAME if s is None else model_name(s)
            self.entries[name] = Entry(name, s)
        self.aliases = {DEFAULT_NAME: next(iter(self.entries))}
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="aromni-keep-alive", daemon=True)
        self._reaper.start()

    def names(self) -> list[str]:
        return list(self.entries)

    def resolve(self, name: str | None) -> Entry:
        """The entry for ``name`` (None or "": the first model)."""
        key = name or DEFAULT_NAME
        key = key if key in self.entries else self.aliases.get(key, key)
        if key not in self.entries:  # the spec it was started with (a path, a hub id)
            key = next((e.name for e in self.entries.values() if e.spec is not None and
                        (e.spec == key or os.path.abspath(e.spec) == os.path.abspath(key))), key)
        if key not in self.entries:
            raise UnknownModel(f"model {name!r} is not served here (served: {', '.join(self.entries)})")
        return self.entries[key]

    def acquire(self, name: str | None) -> Entry:
        """The loaded entry for ``name``, counted as in use until :meth:`release` (loads it if needed)."""
        e = self.resolve(name)
        with e.lock:
            e.users += 1
            e.last_used = time.monotonic()
            if e.omni is None:
                try:
                    self._load(e)
                except BaseException:
                    e.users -= 1
                    raise
        return e

    def release(self, e: Entry) -> None:
        with e.lock:
            e.users -= 1
            e.last_used = time.monotonic()

    def preload(self) -> None:
        for e in self.entries.values():
            if e.spec is not None:
                self.release(self.acquire(e.name))

    def _load(self, e: Entry) -> None:
        from ..api import load
        t0 = time.perf_counter()
        omni = load(e.spec, device=self.cfg.device, dtype=self.cfg.dtype)
        e.batcher = Batcher(self.cfg.max_batch, cancel_of=current_cancel)
        omni.engine = e.batcher
        e.omni, e.loaded_at = omni, time.time()
        self.log(f"aromni serve: loaded {e.name} ({omni.source or 'model'}) on {omni.device} in "
                 f"{time.perf_counter() - t0:.1f}s")

    def _unload(self, e: Entry) -> None:
        b, e.omni, e.batcher, e.loaded_at = e.batcher, None, None, None
        if b is not None:
            b.close()
        gc.collect()
        self.log(f"aromni serve: unloaded {e.name} (idle)")

    def _reap(self) -> None:
        while not self._stop.wait(1.0):
            ka = self.cfg.keep_alive_s
            if ka is None:
                continue
            now = time.monotonic()
            for e in self.entries.values():
                with e.lock:
                    idle = e.batcher is not None and not e.batcher.busy  # a loaded model has its batcher
                    if e.omni is not None and e.users == 0 and idle and now - e.last_used >= ka:
                        self._unload(e)

    def close(self) -> None:
        self._stop.set()
        for e in self.entries.values():
            with e.lock:
                if e.batcher is not None:
                    e.batcher.close()

    def stats(self) -> dict:
        rows = queued = tokens = batches = decoded = biggest = 0
        decode_s = 0.0
        tps = 0.0
        loaded = 0
        for e in self.entries.values():
            b = e.batcher
            if b is None:
                continue
            loaded += 1
            rows += b.stats.running_rows
            queued += b.stats.queued_rows
            tokens += b.stats.tokens
            decode_s += b.stats.decode_s
            batches += b.stats.batches
            decoded += b.stats.rows
            biggest = max(biggest, b.stats.max_rows)
            tps += b.stats.last_tokens_per_s if b.stats.running_rows else 0.0
        return {"loaded": loaded, "running_rows": rows, "queued_rows": queued, "tokens": tokens,
                "decode_s": decode_s, "tokens_per_s": tps, "batches": batches, "rows": decoded, "max_rows": biggest}


def model_name(spec: str) -> str:
    """A served model's name: a hub id as given, a directory by its last component."""
    if os.path.exists(spec):
        return os.path.basename(os.path.normpath(spec)) or spec
    return spec
