"""core/serve/runner.py: request threads and what happens to a job whose request stopped waiting."""
from __future__ import annotations

import asyncio
import gc
import threading

from aromni.core.serve.runner import QueueFull, Runner


def test_an_abandoned_jobs_error_is_not_reported_by_asyncio():
    seen = []

    async def main():
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: seen.append(ctx))
        r = Runner(1, 0)
        fut = r.submit(lambda: 1 / 0, threading.Event())
        await asyncio.sleep(0)
        await asyncio.wait([fut])  # done; nobody calls result(), as when the client has gone
        del fut
        gc.collect()
        await asyncio.sleep(0)
        r.close()

    asyncio.run(main())
    gc.collect()
    assert seen == []


def test_queue_limit_and_awaited_errors_still_raise():
    async def main():
        r = Runner(1, 0)
        gate = threading.Event()
        first = r.submit(gate.wait, threading.Event())
        try:
            r.submit(lambda: None, threading.Event())
            raise AssertionError("a second job fits nowhere")
        except QueueFull:
            pass
        gate.set()
        await first
        try:
            await r.submit(lambda: 1 / 0, threading.Event())
            raise AssertionError("the error reaches whoever awaits")
        except ZeroDivisionError:
            pass
        r.close()

    asyncio.run(main())
