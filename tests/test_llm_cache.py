"""The request cache: hits and misses, no cached errors, concurrent writers, and resuming a killed run."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from labalign.errors import LabalignError
from labalign.llm.cache import CachedAnswer, CachedBackend, RequestCache
from labalign.llm.openai_backend import OpenAIBackend
from labalign.llm.types import Choice, GenerationParams, LLMRequest, LLMResult, Message
from labalign.settings.llm import LLMSettings
from tests.conftest import repo_root
from tests.llm_fakes import FaultConfig, FaultServer, ScriptedBackend, ServerThread


def ask(text: str, *, sample: int = 0, tag: str = "", **params: object) -> LLMRequest:
    return LLMRequest(
        messages=(Message("user", text),),
        params=GenerationParams(**params),  # type: ignore[arg-type]
        sample_index=sample,
        tag=tag,
    )


def run(backend: CachedBackend, requests: list[LLMRequest]) -> tuple[list[LLMResult], list[LLMResult]]:
    seen: list[LLMResult] = []
    results = asyncio.run(backend.generate(requests, on_result=seen.append))
    return results, seen


def test_second_run_is_answered_from_the_cache(tmp_path: Path) -> None:
    inner = ScriptedBackend()
    backend = CachedBackend(inner, tmp_path / "cache.sqlite")
    requests = [ask("one"), ask("two", n=2), ask("two", n=2, sample=1), LLMRequest(prompt="raw")]
    first, seen = run(backend, requests)
    assert [r.cached for r in first] == [False] * 4 and len(seen) == 4
    assert backend.stats == {"hits": 0, "misses": 4, "errors": 0}

    again = CachedBackend(inner, tmp_path / "cache.sqlite")  # a new process would open it the same way
    second, seen = run(again, [*requests, ask("three")])
    assert [r.cached for r in second] == [True] * 4 + [False]
    assert [(r.choices, r.prompt_tokens, r.completion_tokens) for r in second[:4]] == [
        (r.choices, r.prompt_tokens, r.completion_tokens) for r in first
    ]
    assert [r.request for r in second] == [*requests, ask("three")] and len(seen) == 5
    assert again.stats == {"hits": 4, "misses": 1, "errors": 0}
    assert inner.seen[-1] == ask("three") and len(inner.seen) == 5


def test_errors_are_never_cached(tmp_path: Path) -> None:
    inner = ScriptedBackend()
    backend = CachedBackend(inner, tmp_path / "c.sqlite")
    requests = [ask("fail:timeout"), ask("fine")]
    first, _ = run(backend, requests)
    assert first[0].error is not None and first[0].error.kind == "timeout" and first[1].ok
    second, _ = run(backend, requests)
    assert second[0].error is not None and not second[0].cached and second[1].cached
    assert backend.stats == {"hits": 1, "misses": 3, "errors": 2}
    assert [r.messages[0].content for r in inner.seen] == ["fail:timeout", "fine", "fail:timeout"]  # type: ignore[index]


def test_identical_requests_in_a_batch_go_to_the_model_once(tmp_path: Path) -> None:
    inner = ScriptedBackend()
    backend = CachedBackend(inner, tmp_path / "c.sqlite")
    # Same key (tags are not part of it), so one call answers all three under their own tags.
    requests = [ask("same", tag="a"), ask("same", tag="b"), ask("other"), ask("same", tag="c")]
    results, seen = run(backend, requests)
    assert len(inner.seen) == 2
    assert [r.request.tag for r in results] == ["a", "b", "", "c"]
    assert results[0].choices == results[1].choices == results[3].choices
    assert sorted(r.request.tag for r in seen) == ["", "a", "b", "c"]


def test_unreadable_rows_are_misses_and_bad_files_are_user_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    inner = ScriptedBackend()
    backend = CachedBackend(inner, path)
    run(backend, [ask("x")])
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE results SET result = '{not json'")
    results, _ = run(CachedBackend(inner, path), [ask("x")])
    assert results[0].ok and not results[0].cached and len(inner.seen) == 2
    (tmp_path / "dir.sqlite").mkdir()
    with pytest.raises(LabalignError, match="cannot open the request cache"):
        RequestCache(tmp_path / "dir.sqlite")


def test_a_damaged_cache_is_set_aside_before_the_model_opens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from labalign.llm import resolve

    path = tmp_path / "cache.sqlite"
    path.write_bytes(b"this is not an SQLite file, it only has the name" * 100)
    opened: list[bool] = []

    def open_backend(spec: str, **kw: object) -> ScriptedBackend:
        opened.append(path.is_file() and path.read_bytes().startswith(b"SQLite format 3"))
        return ScriptedBackend()

    monkeypatch.setattr(resolve, "open_backend", open_backend)
    backend = resolve.open_cached_backend("any", path)
    results, _ = run(backend, [ask("x")])
    assert results[0].ok and opened == [True]  # a fresh cache already existed when the model opened
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("cache.sqlite.damaged-")]
    assert len(kept) == 1 and kept[0].read_bytes().startswith(b"this is not")  # nothing deleted
    err = capsys.readouterr().err
    assert "is damaged" in err and "starting a new one" in err and "Traceback" not in err


def test_threads_share_one_cache(tmp_path: Path) -> None:
    cache = RequestCache(tmp_path / "c.sqlite")
    answer = CachedAnswer((Choice("t", "stop"),), 1, 1)

    def write(worker: int) -> None:
        for i in range(150):
            cache.put(f"{worker}-{i}", "m", ask(f"{worker}-{i}"), answer)
            assert cache.get_many([f"{worker}-{i}"])

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 600


WRITER = """
import sys
from pathlib import Path
from labalign.llm.cache import CachedAnswer, RequestCache
from labalign.llm.types import Choice, LLMRequest
cache = RequestCache(Path(sys.argv[1]))
answer = CachedAnswer((Choice("text", "stop"),), 3, 1)
for i in range(int(sys.argv[3])):
    cache.put(f"{sys.argv[2]}-{i}", "model", LLMRequest(prompt=str(i)), answer)
"""


def test_processes_write_one_cache_at_once(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), f"p{w}", "300"], stderr=subprocess.PIPE)
        for w in range(3)
    ]
    errors = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    with RequestCache(path) as cache:
        assert len(cache) == 900


CHILD = """
import asyncio, sys
from pathlib import Path
from labalign.llm.cache import CachedBackend
from labalign.llm.openai_backend import OpenAIBackend
from labalign.settings.llm import LLMSettings
from labalign.llm.types import GenerationParams, LLMRequest

url, cache, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
settings = LLMSettings(max_concurrency=4, backoff_base_s=0.01)
backend = CachedBackend(OpenAIBackend(url, model="m", settings=settings), cache)
requests = [LLMRequest(prompt=f"item {i}", params=GenerationParams(max_tokens=8, seed=i)) for i in range(n)]
asyncio.run(backend.generate(requests, on_result=lambda r: print("done", r.request.prompt, flush=True)))
print("finished", flush=True)
"""


def test_killed_run_resumes_without_repeating_a_finished_call(tmp_path: Path) -> None:
    n, finish_first = 40, 12
    requests = [
        LLMRequest(prompt=f"item {i}", params=GenerationParams(max_tokens=8, seed=i)) for i in range(n)
    ]
    every_id = {r.prompt for r in requests}
    cache_path = tmp_path / "run.sqlite"
    # After 12 answers the server holds every request: the child is killed with calls in flight.
    server = FaultServer(FaultConfig(hold_after=finish_first, latency_s=0.005))
    settings = LLMSettings(max_concurrency=4, backoff_base_s=0.01)
    with ServerThread(server.app) as url:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, url, str(cache_path), str(n)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=repo_root(),
        )
        assert child.stdout is not None
        reported: set[str] = set()
        try:
            while len(reported) < finish_first:
                line = child.stdout.readline()
                assert line.startswith("done "), f"child ended early: {line!r}"
                reported.add(line.removeprefix("done ").strip())
            deadline = time.monotonic() + 10
            while server.in_flight < 4 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert server.in_flight == 4  # mid-batch: four calls hang at the server
            os.kill(child.pid, signal.SIGKILL)
        finally:
            child.kill()
            child.wait(timeout=10)
            child.stdout.close()
            server.release()
        assert child.returncode == -signal.SIGKILL
        received_before, answered_before = server.snapshot()
        assert set(answered_before) == reported and set(answered_before.values()) == {1}
        with RequestCache(cache_path) as stored:
            assert len(stored) == finish_first  # each stored as it completed

        server.config.hold_after = None
        resumed = CachedBackend(OpenAIBackend(url, model="m", settings=settings), cache_path)
        results = asyncio.run(resumed.generate(requests))
        received, answered = server.snapshot()
        # Exactly the calls that had not completed, each once; none of those that had.
        assert answered - answered_before == Counter({rid: 1 for rid in every_id - reported})
        assert received - received_before == Counter({rid: 1 for rid in every_id - reported})
        assert resumed.stats == {"hits": finish_first, "misses": n - finish_first, "errors": 0}
        assert sum(r.cached for r in results) == finish_first

        reference = CachedBackend(OpenAIBackend(url, model="m", settings=settings), tmp_path / "fresh.sqlite")
        uninterrupted = asyncio.run(reference.generate(requests))
    assert all(r.ok for r in results)
    assert [(r.request, r.choices, r.prompt_tokens, r.completion_tokens) for r in results] == [
        (r.request, r.choices, r.prompt_tokens, r.completion_tokens) for r in uninterrupted
    ]
