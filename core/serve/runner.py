"""Request threads: a request's task function runs in one of ``max_active`` threads; up to ``max_queue``
more wait for one; past that the server answers 503."""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

_local = threading.local()


class QueueFull(Exception):
    """No room in the queue."""


def current_cancel() -> threading.Event | None:
    """The cancel flag of the request running in this thread (None outside a request)."""
    return getattr(_local, "cancel", None)


def _retrieve(f: asyncio.Future) -> None:
    """Mark a job's error as seen: a request that stopped waiting (client gone, timeout) must not make asyncio
    print the abandoned job's traceback; the request's own answer already says what happened."""
    if not f.cancelled():
        f.exception()


class Runner:
    def __init__(self, max_active: int, max_queue: int):
        self.max_active, self.max_queue = max_active, max_queue
        self.pool = ThreadPoolExecutor(max_workers=max_active, thread_name_prefix="aromni-request")
        self.waiting = 0
        self.active = 0
        self._lock = threading.Lock()

    def submit(self, fn: Callable, cancel: threading.Event) -> asyncio.Future:
        """Run ``fn()`` in a request thread (``cancel`` is its :func:`current_cancel`); raises QueueFull."""
        with self._lock:
            if self.waiting + self.active >= self.max_active + self.max_queue:
                raise QueueFull()
            self.waiting += 1

        def job():
            with self._lock:
                self.waiting -= 1
                self.active += 1
            _local.cancel = cancel
            try:
                if cancel.is_set():
                    from .batcher import Cancelled
                    raise Cancelled()
                return fn()
            finally:
                _local.cancel = None
                with self._lock:
                    self.active -= 1

        fut = asyncio.wrap_future(self.pool.submit(job))
        fut.add_done_callback(_retrieve)
        return fut

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
