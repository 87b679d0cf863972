"""Helpers shared by the in-process backends: stop strings, seeds, the serial worker."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from labalign.llm.local_queue import SerialWorker, StopScanner, derive_seed, truncate_at_stop


def test_truncate_at_earliest_stop() -> None:
    assert truncate_at_stop("abc<|end|>def</s>", ("</s>", "<|end|>")) == ("abc", True)
    assert truncate_at_stop("abc", ("x",)) == ("abc", False)
    assert truncate_at_stop("abc", ("", "c")) == ("ab", True)  # an empty stop string is ignored
    assert truncate_at_stop("abc", ()) == ("abc", False)


@pytest.mark.parametrize(
    "deltas",
    [
        ["Hello <|e", "nd|> more"],
        ["Hello ", "<", "|", "e", "n", "d", "|", ">", " more"],
        ["Hello <|end|> more"],
        ["Hel", "lo <|en", "d|>"],
    ],
)
def test_stop_scanner_never_emits_the_stop_string(deltas: list[str]) -> None:
    scanner = StopScanner(("<|end|>",))
    out = "".join(scanner.feed(d) for d in deltas) + scanner.finish()
    assert out == "Hello "
    assert scanner.stopped


def test_stop_scanner_releases_held_back_text_that_was_no_stop() -> None:
    scanner = StopScanner(("<|end|>",))
    first = scanner.feed("a <|en")
    assert first == "a "  # "<|en" might start a stop string: held back
    assert scanner.feed("emy") == "<|enemy"
    assert scanner.feed(" <") == " "
    assert scanner.finish() == "<"
    assert not scanner.stopped


def test_derive_seed_distinguishes_samples_and_choices() -> None:
    assert derive_seed(7, 0, 0) == 7
    seeds = {derive_seed(7, i, j) for i in range(4) for j in range(4)}
    assert len(seeds) == 16
    assert derive_seed(7, 2, 1) == derive_seed(7, 2, 1)
    assert all(0 <= s < 2**32 for s in seeds)


def test_serial_worker_runs_one_call_at_a_time() -> None:
    worker = SerialWorker("test")
    active = 0
    peak = 0
    lock = threading.Lock()

    def job() -> int:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.01)
        with lock:
            active -= 1
        return threading.get_ident()

    async def main() -> list[int]:
        return await asyncio.gather(*(worker.run(job) for _ in range(6)))

    threads = asyncio.run(main())
    worker.close()
    assert peak == 1
    assert len(set(threads)) == 1


def test_serial_worker_stream_delivers_items_errors_and_cancellation() -> None:
    worker = SerialWorker("test")
    stopped = threading.Event()

    def counting(emit: Callable[[int], None], cancel: threading.Event) -> None:
        for i in range(1000):
            if cancel.is_set():
                stopped.set()
                return
            emit(i)
            time.sleep(0.001)

    def failing(emit: Callable[[int], None], cancel: threading.Event) -> None:
        emit(1)
        raise RuntimeError("boom")

    async def main() -> tuple[list[int], list[int]]:
        first: list[int] = []
        stream = worker.stream(counting)
        async for item in stream:
            first.append(item)
            if item == 2:
                break
        await stream.aclose()  # type: ignore[attr-defined]
        got: list[int] = []
        with pytest.raises(RuntimeError, match="boom"):
            async for item in worker.stream(failing):
                got.append(item)
        return first, got

    first, got = asyncio.run(main())
    worker.close()
    assert first == [0, 1, 2]
    assert stopped.is_set()  # the producer saw the cancellation and returned
    assert got == [1]


def test_closed_worker_refuses_work() -> None:
    worker = SerialWorker("test")
    worker.close()
    with pytest.raises(RuntimeError):
        asyncio.run(worker.run(lambda: 1))
