"""Persistent request cache: every successful model answer, keyed by model identity + request.

SQLite in WAL mode, one transaction per answer as it completes: a run killed at any point resumes
without repeating a single call that had finished, and several processes (or threads) can share one
cache file. Errors are never stored, so a resumed run retries exactly what failed.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from labalign.errors import LabalignError
from labalign.llm.types import Backend, Choice, LLMRequest, LLMResult, ResultCallback, resolve_identity

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    request TEXT NOT NULL,
    result TEXT NOT NULL,
    created_at REAL NOT NULL
)
"""
_LOOKUP_CHUNK = 500  # stays under SQLite's bound-parameter limit on old builds (999)


@dataclass(frozen=True)
class CachedAnswer:
    """What is stored of a result: enough to rebuild it for any request with the same key."""

    choices: tuple[Choice, ...]
    prompt_tokens: int
    completion_tokens: int

    def to_json(self) -> str:
        return json.dumps(
            {
                "choices": [{"text": c.text, "finish_reason": c.finish_reason} for c in self.choices],
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
            },
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, text: str) -> CachedAnswer:
        data = json.loads(text)
        return cls(
            choices=tuple(Choice(text=c["text"], finish_reason=c["finish_reason"]) for c in data["choices"]),
            prompt_tokens=int(data["prompt_tokens"]),
            completion_tokens=int(data["completion_tokens"]),
        )

    def result_for(self, request: LLMRequest) -> LLMResult:
        return LLMResult(
            request=request,
            choices=self.choices,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cached=True,
        )


class RequestCache:
    """The SQLite file. Thread-safe (one connection behind a lock); process-safe through SQLite locks."""

    def __init__(self, path: Path, *, busy_timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        try:
            self._conn = self._connect(busy_timeout_s)
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError):  # permissions, a folder in the way, a lock
                raise LabalignError(
                    f"cannot open the request cache: {exc}",
                    path=self.path,
                    hint="check the folder's permissions, or point the run elsewhere",
                ) from exc
            # Not a database, or damaged: keep it for inspection and start afresh rather than stop a
            # run over answers that can be asked again.
            aside = self._move_aside()
            Console(stderr=True).print(
                f"[yellow]warning:[/] the request cache {escape(str(self.path))} is damaged "
                f"({escape(str(exc))}); moved to {escape(aside.name)} and starting a new one (its "
                "answers will be asked again)",
                soft_wrap=True,
                highlight=False,
            )
            try:
                self._conn = self._connect(busy_timeout_s)
            except sqlite3.Error as again:
                raise LabalignError(f"cannot open the request cache: {again}", path=self.path) from again
        self._lock = threading.Lock()

    def _connect(self, busy_timeout_s: float) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LabalignError(f"cannot create the request cache's folder: {exc}", path=self.path) from exc
        # Autocommit (isolation_level=None): each put is its own short transaction, so a SIGKILL
        # loses at most the answer being written, and writers never hold the lock long.
        conn = sqlite3.connect(
            self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            # NORMAL in WAL mode: committed data survives a process crash (not a power cut), at a
            # fraction of FULL's fsync cost per answer.
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(_SCHEMA)
            # Damage found now, before any model loads, rather than halfway through a run.
            problem = conn.execute("PRAGMA quick_check").fetchone()[0]
            if problem != "ok":
                raise sqlite3.DatabaseError(f"integrity check: {problem}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _move_aside(self) -> Path:
        aside = self.path.with_name(f"{self.path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{self.path}{suffix}")
            if source.exists():
                os.replace(source, Path(f"{aside}{suffix}"))
        return aside

    def get_many(self, keys: Iterable[str]) -> dict[str, CachedAnswer]:
        wanted = list(dict.fromkeys(keys))
        found: dict[str, CachedAnswer] = {}
        with self._lock:
            for start in range(0, len(wanted), _LOOKUP_CHUNK):
                chunk = wanted[start : start + _LOOKUP_CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = self._conn.execute(f"SELECT key, result FROM results WHERE key IN ({marks})", chunk)
                for key, text in rows:
                    try:
                        found[key] = CachedAnswer.from_json(text)
                    except (ValueError, KeyError, TypeError):
                        continue  # an unreadable row is a miss: the answer is fetched and rewritten
        return found

    def put(self, key: str, model: str, request: LLMRequest, answer: CachedAnswer) -> None:
        payload = json.dumps(request.key_payload(), ensure_ascii=False, sort_keys=True)
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO results (key, model, request, result, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (key, model, payload, answer.to_json(), time.time()),
            )

    def __len__(self) -> int:
        with self._lock:
            row = self._conn.execute("SELECT COUNT(*) FROM results").fetchone()
        return int(row[0])

    def keys(self) -> set[str]:
        with self._lock:
            return {row[0] for row in self._conn.execute("SELECT key FROM results")}

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> RequestCache:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class CachedBackend:
    """`Backend` that answers from the cache when it can and stores every new answer as it arrives."""

    def __init__(self, backend: Backend, cache: Path | RequestCache) -> None:
        self._inner = backend
        self.cache = cache if isinstance(cache, RequestCache) else RequestCache(cache)
        self._identity: str | None = None
        self._hits = 0
        self._misses = 0
        self._errors = 0

    @property
    def inner(self) -> Backend:
        return self._inner

    @property
    def identity(self) -> str:
        if self._identity is None:
            self._identity = self._inner.identity
        return self._identity

    @property
    def context_window(self) -> int | None:
        return self._inner.context_window

    @property
    def stats(self) -> dict[str, int]:
        """Requests answered from the cache (hits), sent to the model (misses), and failed (errors)."""
        return {"hits": self._hits, "misses": self._misses, "errors": self._errors}

    async def generate(
        self, requests: Sequence[LLMRequest], *, on_result: ResultCallback | None = None
    ) -> list[LLMResult]:
        todo = list(requests)
        if not todo:
            return []
        if self._identity is None:
            # Identity may be slow (hashing a model file, asking a server): keep it off the loop.
            self._identity = await resolve_identity(self._inner)
        identity = self._identity
        keys = [r.cache_key(identity) for r in todo]
        found = await asyncio.to_thread(self.cache.get_many, keys)
        results: list[LLMResult | None] = [None] * len(todo)
        waiting: dict[str, list[int]] = {}  # key -> indices that want its answer
        for i, (request, key) in enumerate(zip(todo, keys, strict=True)):
            answer = found.get(key)
            if answer is not None:
                hit = answer.result_for(request)
                results[i] = hit
                self._hits += 1
                if on_result is not None:
                    on_result(hit)
            else:
                waiting.setdefault(key, []).append(i)
        if waiting:
            # Identical requests in one batch go to the model once and share the answer.
            firsts = [todo[indices[0]] for indices in waiting.values()]
            self._misses += len(firsts)

            def store(result: LLMResult) -> None:
                key = result.request.cache_key(identity)
                if result.ok:
                    # Written before anyone hears of the result: once reported done, it is on disk.
                    self.cache.put(
                        key,
                        identity,
                        result.request,
                        CachedAnswer(result.choices, result.prompt_tokens, result.completion_tokens),
                    )
                else:
                    self._errors += 1
                for index in waiting.get(key, ()):
                    if results[index] is None:
                        mine = _for_request(result, todo[index])
                        results[index] = mine
                        if on_result is not None:
                            on_result(mine)

            inner_results = await self._inner.generate(firsts, on_result=store)
            # A backend that skipped on_result for some result still gets it stored and delivered.
            for result in inner_results:
                key = result.request.cache_key(identity)
                if any(results[i] is None for i in waiting.get(key, ())):
                    store(result)
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            raise RuntimeError(f"backend returned no result for {len(missing)} request(s)")
        return [r for r in results if r is not None]

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        """Not cached: streaming is interactive (chat, serve), where a replayed answer is not wanted."""
        async for piece in self._inner.stream(request):
            yield piece

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self.cache.close()


def _for_request(result: LLMResult, request: LLMRequest) -> LLMResult:
    """The shared answer, under this caller's own request (its tag may differ)."""
    if result.request is request:
        return result
    return LLMResult(
        request=request,
        choices=result.choices,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        error=result.error,
        cached=result.cached,
    )
