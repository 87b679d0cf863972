"""Gathers requests that arrive within a few milliseconds into one `Backend.generate` batch.

In-process backends (transformers, llama.cpp) run a batch far faster than the same requests one by
one; a remote backend does not care. Each caller gets its own result as soon as it is ready.
"""

from __future__ import annotations

import asyncio
import contextlib

from labalign.llm.types import Backend, LLMError, LLMRequest, LLMResult

_Pending = tuple[LLMRequest, "asyncio.Future[LLMResult]"]


class Batcher:
    """`await batcher.submit(request)`: one result; requests close in time share a `generate` call."""

    def __init__(self, backend: Backend, *, window_s: float = 0.005, max_batch: int = 32) -> None:
        self._backend = backend
        self._window_s = window_s
        self._max_batch = max_batch
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[_Pending] | None = None
        self._collector: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    async def submit(self, requests: list[LLMRequest]) -> list[LLMResult]:
        """Results for `requests`, in order (they may travel in different batches)."""
        if self._window_s <= 0:
            return await self._backend.generate(requests)
        queue = self._ensure_collector()
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[LLMResult]] = []
        for request in requests:
            future: asyncio.Future[LLMResult] = loop.create_future()
            futures.append(future)
            queue.put_nowait((request, future))
        return list(await asyncio.gather(*futures))

    async def aclose(self) -> None:
        """Stop collecting; batches already sent to the backend finish."""
        if self._collector is not None:
            self._collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._collector
            self._collector = None
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    def _ensure_collector(self) -> asyncio.Queue[_Pending]:
        loop = asyncio.get_running_loop()
        if self._queue is None or self._loop is not loop or self._collector is None or self._collector.done():
            # A new loop (tests, a restarted server) gets a new queue: asyncio objects bind to one loop.
            self._loop = loop
            self._queue = asyncio.Queue()
            self._collector = loop.create_task(self._collect(self._queue))
        return self._queue

    async def _collect(self, queue: asyncio.Queue[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + self._window_s
            while len(batch) < self._max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), remaining))
                except TimeoutError:
                    break
            live = [(request, future) for request, future in batch if not future.done()]
            if live:
                task = loop.create_task(self._dispatch(live))
                self._running.add(task)
                task.add_done_callback(self._running.discard)

    async def _dispatch(self, batch: list[_Pending]) -> None:
        by_request: dict[int, list[asyncio.Future[LLMResult]]] = {}
        for request, future in batch:
            by_request.setdefault(id(request), []).append(future)

        def deliver(result: LLMResult) -> None:
            # Backends hand back the request object they were given: that tells whose result it is.
            for future in by_request.get(id(result.request), []):
                if not future.done():
                    future.set_result(result)
                    return

        requests = [request for request, _ in batch]
        try:
            results = await self._backend.generate(requests, on_result=deliver)
        except Exception as exc:  # a backend bug must fail its requests, not hang them
            error = LLMError("internal", f"{type(exc).__name__}: {exc}")
            for request, future in batch:
                if not future.done():
                    future.set_result(LLMResult(request=request, error=error))
            return
        # Whatever `deliver` could not match (a backend that copies requests) goes by position.
        for (_, future), result in zip(batch, results, strict=False):
            if not future.done():
                future.set_result(result)
        missing = LLMError("internal", "the backend returned no result for this request")
        for request, future in batch:
            if not future.done():
                future.set_result(LLMResult(request=request, error=missing))
