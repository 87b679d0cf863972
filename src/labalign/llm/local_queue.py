"""Plumbing shared by the in-process backends (llama.cpp, transformers).

Model libraries are neither re-entrant nor async: every call into one model goes through a single
worker thread, so concurrent callers queue up instead of corrupting its state, and the event loop stays
free while a model computes.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class SerialWorker:
    """One thread that runs every call into a model, in submission order."""

    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    async def run(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the worker thread and await its result."""
        if self._closed:
            raise RuntimeError("the model backend is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def stream(
        self, produce: Callable[[Callable[[T], None], threading.Event], None]
    ) -> AsyncIterator[T]:
        """Items that `produce(emit, cancel)` emits on the worker thread, as they come.

        `cancel` is set when the consumer stops early (break, cancellation): `produce` should return
        soon after, so an abandoned stream frees the worker. An exception in `produce` is re-raised here.
        """
        if self._closed:
            raise RuntimeError("the model backend is closed")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancel = threading.Event()

        def emit(item: T) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, ("item", item))

        def pump() -> None:
            try:
                produce(emit, cancel)
            except BaseException as exc:  # handed to the consumer, which re-raises it
                loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, ("done", None))

        future = loop.run_in_executor(self._executor, pump)
        try:
            while True:
                kind, value = await queue.get()
                if kind == "done":
                    break
                if kind == "error":
                    raise value
                yield value
        finally:
            cancel.set()
            # Wait for the producer so the next call on this worker never overlaps a dying stream.
            await asyncio.shield(future)

    def close(self) -> None:
        """Stop accepting work; work already queued still finishes."""
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)


def derive_seed(seed: int, sample_index: int, choice_index: int) -> int:
    """A 32-bit seed per (request seed, sample, choice), so repeats of a request sample differently
    while the same request always samples the same way."""
    if sample_index == 0 and choice_index == 0:
        return seed & 0xFFFFFFFF
    blob = f"{seed}:{sample_index}:{choice_index}".encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "little")


def truncate_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """`text` cut before the earliest stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class StopScanner:
    """Turns a stream of text deltas into deltas that never include a stop string.

    Text that might be the start of a stop string is held back until the next delta tells, so the
    concatenated output equals the non-streamed, stop-truncated text.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._text = ""
        self._emitted = 0
        self.stopped = False

    def feed(self, delta: str) -> str:
        """The part of the text that is now safe to emit (sets `stopped` when a stop string appears)."""
        if self.stopped:
            return ""
        self._text += delta
        text, found = truncate_at_stop(self._text, self._stops)
        if found:
            self.stopped = True
            return self._take(len(text))
        hold = max((_overlap(text, s) for s in self._stops), default=0)
        return self._take(len(text) - hold)

    def finish(self) -> str:
        """Whatever was held back, at the end of generation."""
        return "" if self.stopped else self._take(len(self._text))

    def _take(self, end: int) -> str:
        out = self._text[self._emitted : end] if end > self._emitted else ""
        self._emitted = max(self._emitted, end)
        return out


def _overlap(text: str, stop: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `stop`."""
    for n in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0
