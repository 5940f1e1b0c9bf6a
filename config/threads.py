"""The thread a request's sync code runs on under ASGI, reused from request to request.

Django's ASGI handler enters a ThreadSensitiveContext per request: its first sync call starts
a new thread (one executor of one worker), and its exit starts another thread to join it. Two
thread starts a request, under the GIL with every request in flight. Here a finished request's
executor waits in `_idle` for the next one (asgiref's ThreadSensitiveContext(executor=...):
the caller owns it, so it is not shut down). Database connections are per thread; a request's
own close (request_finished) gives its connection back to the pool, and the next request's
request_started closes anything left behind. A thread still running a view whose client went
away is not reused: it ends when that view does.

Tasks a request starts that must outlive its response (a reply stream's shielded ending, which
stores and meters the reply after the client has gone) are kept with `request_task_keep`: the
context waits for them before it exits, because thread-sensitive calls after the exit raise.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from contextvars import ContextVar

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.db import close_old_connections, connections


class _RequestExecutor(ThreadPoolExecutor):
    """One thread, and whether work submitted to it is still queued or running."""

    def __init__(self):
        super().__init__(max_workers=1, thread_name_prefix="request")
        self._unfinished = 0
        self._count_lock = threading.Lock()

    def submit(self, fn, /, *args, **kwargs):
        with self._count_lock:
            self._unfinished += 1
        future = super().submit(fn, *args, **kwargs)
        future.add_done_callback(self._finished)
        return future

    def _finished(self, _future) -> None:
        with self._count_lock:
            self._unfinished -= 1

    @property
    def busy(self) -> bool:
        with self._count_lock:
            return self._unfinished > 0


_idle: list[_RequestExecutor] = []  # touched only from the event loop's thread
# Idle threads kept for the next requests; past them a finished request's thread ends, or a burst
# of N requests at once (N streams open) would leave N threads in the process for good.
IDLE_THREADS_KEPT = 64
_kept: ContextVar[list[asyncio.Task] | None] = ContextVar("request_tasks_kept", default=None)


@asynccontextmanager
async def request_thread() -> AsyncIterator[None]:
    """Run this block's thread-sensitive sync calls on one reused thread of their own."""
    executor = _idle.pop() if _idle else _RequestExecutor()
    kept: list[asyncio.Task] = []
    token = _kept.set(kept)
    try:
        async with ThreadSensitiveContext(executor=executor):
            try:
                yield
            finally:
                if kept:
                    await asyncio.gather(*kept, return_exceptions=True)
                    # The tasks ran after the request's close: their connections go back now.
                    await sync_to_async(close_old_connections, thread_sensitive=True)()
    finally:
        _kept.reset(token)
        if executor.busy:
            # A client that went away while a sync view was still running (a plain send waiting on
            # its provider): the view runs on to its end, and the next request must not queue
            # behind it. This thread ends when that work does.
            executor.shutdown(wait=False)
        elif len(_idle) >= IDLE_THREADS_KEPT:
            executor.submit(connections.close_all)
            executor.shutdown(wait=False)
        else:
            _idle.append(executor)


def request_task_keep(task: asyncio.Task) -> None:
    """Keep the request's thread context open until `task` ends (outside a request: nothing to do)."""
    kept = _kept.get()
    if kept is not None:
        kept.append(task)


def idle_threads_stop() -> None:
    """Close the idle threads' database connections and stop the threads (tests, between tests:
    their settings keep a thread's connections open for reuse, which would outlive the test)."""
    while _idle:
        executor = _idle.pop()
        executor.submit(connections.close_all).result()
        executor.shutdown()
