"""Gathers requests that arrive within a few milliseconds into one `Backend.generate` batch.

In-process backends (transformers, llama.cpp) run a batch far faster than the same requests one by
one; a remote backend does not care. Each caller gets its own result as soon as it is ready.

At most `max_inflight` batches run at once (one for an in-process model, which computes one batch at a
time anyway): the rest wait here, where a caller that gives up (its client disconnected) is dropped
before any work is done for it, and a batch whose every caller has gone is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from labalign.llm.types import Backend, LLMError, LLMRequest, LLMResult
from labalign.serve.admission import Admission

_Pending = tuple[LLMRequest, "asyncio.Future[LLMResult]"]


def budget_tokens(requests: list[LLMRequest]) -> int:
    """What the requests may cost at most: choices x max_tokens (see serve.admission)."""
    return sum(r.params.n * r.params.max_tokens for r in requests)


class Batcher:
    """`await batcher.submit(request)`: one result; requests close in time share a `generate` call."""

    def __init__(
        self,
        backend: Backend,
        *,
        window_s: float = 0.005,
        max_batch: int = 32,
        max_inflight: int = 1,
        admission: Admission | None = None,
    ) -> None:
        self._backend = backend
        self._window_s = window_s
        self._max_batch = max_batch
        self._max_inflight = max_inflight
        self._admission = admission
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[_Pending] | None = None
        self._slots: asyncio.Semaphore | None = None
        self._collector: asyncio.Task[None] | None = None
        self._running: dict[asyncio.Task[None], list[_Pending]] = {}
        self._holding: list[_Pending] = []  # taken from the queue, waiting for a free slot

    async def submit(self, requests: list[LLMRequest]) -> list[LLMResult]:
        """Results for `requests`, in order (they may travel in different batches). Cancelling the
        call withdraws whatever of it has not started."""
        if self._window_s <= 0:
            start = time.monotonic()
            results = await self._backend.generate(requests)
            self._record(requests, time.monotonic() - start)
            return results
        queue = self._ensure_collector()
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[LLMResult]] = []
        for request in requests:
            future: asyncio.Future[LLMResult] = loop.create_future()
            futures.append(future)
            queue.put_nowait((request, future))
        try:
            return list(await asyncio.gather(*futures))
        except asyncio.CancelledError:
            for future in futures:
                future.cancel()
            raise

    def fail_waiting(self, message: str) -> None:
        """Answer every request not yet started with 503 (the server is shutting down)."""
        if self._queue is None:
            return
        waiting = list(self._holding)
        while not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        _answer_unanswered(waiting, LLMError("unavailable", message))

    def fail_running(self, message: str) -> None:
        """Answer the requests of running batches with 503 and cancel those batches."""
        for task, batch in list(self._running.items()):
            _answer_unanswered(batch, LLMError("unavailable", message))
            task.cancel()

    async def aclose(self) -> None:
        """Stop collecting; running batches are cancelled (their callers have been answered)."""
        if self._collector is not None:
            self._collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._collector
            self._collector = None
        self.fail_waiting("the server is shutting down")
        self.fail_running("the server is shutting down")
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    def _ensure_collector(self) -> asyncio.Queue[_Pending]:
        loop = asyncio.get_running_loop()
        if self._queue is None or self._loop is not loop or self._collector is None or self._collector.done():
            # A new loop (tests, a restarted server) gets a new queue: asyncio objects bind to one loop.
            self._loop = loop
            self._queue = asyncio.Queue()
            self._slots = asyncio.Semaphore(self._max_inflight)
            self._collector = loop.create_task(self._collect(self._queue, self._slots))
        return self._queue

    async def _collect(self, queue: asyncio.Queue[_Pending], slots: asyncio.Semaphore) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await queue.get()
            self._holding = [first]
            await slots.acquire()  # wait here, not in the backend: a waiting caller can still leave
            self._holding = []
            batch = [first]
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
            if not live:
                slots.release()
                continue
            task = loop.create_task(self._dispatch(live))
            self._running[task] = live

            def finished(t: asyncio.Task[None]) -> None:
                self._running.pop(t, None)
                slots.release()

            task.add_done_callback(finished)

            def abandon(_: asyncio.Future[LLMResult], task: asyncio.Task[None] = task) -> None:
                # Every caller of the batch has gone (or been answered): stop computing for nobody.
                batch = self._running.get(task)
                if batch is None or task.done() or not all(f.done() for _, f in batch):
                    return
                if any(f.cancelled() for _, f in batch):
                    task.cancel()

            for _, future in live:
                future.add_done_callback(abandon)

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
        start = time.monotonic()
        try:
            results = await self._backend.generate(requests, on_result=deliver)
        except asyncio.CancelledError:
            return  # abandoned by every caller, or the server is shutting down: all answered already
        except Exception as exc:  # a backend bug must fail its requests, not hang them
            _answer_unanswered(batch, LLMError("internal", f"{type(exc).__name__}: {exc}"))
            return
        self._record(requests, time.monotonic() - start)
        # Whatever `deliver` could not match (a backend that copies requests) goes by position.
        for (_, future), result in zip(batch, results, strict=False):
            if not future.done():
                future.set_result(result)
        _answer_unanswered(batch, LLMError("internal", "the backend returned no result for this request"))

    def _record(self, requests: list[LLMRequest], seconds: float) -> None:
        if self._admission is not None:
            self._admission.record(budget_tokens(requests), seconds)


def _answer_unanswered(pending: list[_Pending], error: LLMError) -> None:
    """Give `error` to every caller in `pending` still waiting for its result."""
    for request, future in pending:
        if not future.done():
            future.set_result(LLMResult(request=request, error=error))
