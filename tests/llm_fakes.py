"""Test doubles for the LLM layer: a scripted in-process `Backend`, and a fault-injecting upstream server.

    backend = ScriptedBackend()                       # answers "echo: <last user text>" deterministically
    upstream = FaultServer(FaultConfig(error_500_rate=0.2, seed=3))
    with ServerThread(upstream.app) as url:           # http://127.0.0.1:<free port>
        ...                                           # upstream.counts[id] = requests seen for that id

A request's id is its prompt, or the content of its last message. Faults are decided per (seed, id,
attempt number), so a run's outcome does not depend on the order requests arrive in, and a test can
predict exactly what the client should see (`FaultServer.outcome`).
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import pytest
import typer
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

import labalign.llm.resolve
from labalign.cli import _Group
from labalign.cli._common import CliState
from labalign.cli.serve import register
from labalign.llm.types import Choice, LLMCallError, LLMError, LLMRequest, LLMResult, ResultCallback
from labalign.settings.llm import LLMSettings

# -- a scripted in-process backend ---------------------------------------------------------------------


def _last_text(request: LLMRequest) -> str:
    if request.messages is not None:
        return request.messages[-1].content
    return request.prompt or ""


class ScriptedBackend:
    """Deterministic `Backend`: choice j of a request answers `[j] echo: <text>` (one token per word).

    Honours max_tokens (cut, finish "length") and stop strings (cut, finish "stop"). Text starting
    with `fail:<kind>` fails with that error kind; `midfail` streams one word and then fails.
    `calls` counts generate() calls, `seen` keeps every request received.
    """

    def __init__(self, *, identity: str = "scripted:v1", context_window: int | None = 2048) -> None:
        self._identity = identity
        self._context_window = context_window
        self.calls = 0
        self.batch_sizes: list[int] = []
        self.seen: list[LLMRequest] = []
        self.closed = False

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def context_window(self) -> int | None:
        return self._context_window

    @staticmethod
    def answer(request: LLMRequest, choice: int = 0) -> tuple[str, str]:
        """(text, finish reason) of one choice."""
        words = f"[{choice}] echo: {_last_text(request)}".split(" ")
        finish = "stop"
        if len(words) > request.params.max_tokens:
            words, finish = words[: request.params.max_tokens], "length"
        text = " ".join(words)
        for stop in request.params.stop:
            if stop in text:
                text, finish = text[: text.index(stop)], "stop"
        return text, finish

    def _result(self, request: LLMRequest) -> LLMResult:
        text = _last_text(request)
        if text.startswith("fail:"):
            kind = text.removeprefix("fail:").split()[0]
            return LLMResult(request=request, error=LLMError(kind, f"scripted {kind}"))  # type: ignore[arg-type]
        choices = tuple(Choice(*self.answer(request, j)) for j in range(request.params.n))
        return LLMResult(
            request=request,
            choices=choices,
            prompt_tokens=len(text.split()),
            completion_tokens=sum(len(c.text.split()) for c in choices),
        )

    async def generate(
        self, requests: Sequence[LLMRequest], *, on_result: ResultCallback | None = None
    ) -> list[LLMResult]:
        self.calls += 1
        self.batch_sizes.append(len(requests))
        self.seen.extend(requests)
        results = []
        for request in requests:
            await asyncio.sleep(0)
            result = self._result(request)
            results.append(result)
            if on_result is not None:
                on_result(result)
        return results

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        self.seen.append(request)
        text = _last_text(request)
        if text.startswith("fail:"):
            kind = text.removeprefix("fail:").split()[0]
            raise LLMCallError(LLMError(kind, f"scripted {kind}"))  # type: ignore[arg-type]
        answer, _ = self.answer(request)
        for i, word in enumerate(answer.split(" ")):
            await asyncio.sleep(0)
            yield word if i == 0 else " " + word
            if text.startswith("midfail"):
                raise LLMCallError(LLMError("server", "scripted failure mid-stream"))

    async def aclose(self) -> None:
        self.closed = True


# -- a fault-injecting OpenAI-compatible upstream ---------------------------------------------------

Outcome = Literal["ok", "500", "429", "slow", "malformed", "400", "midstream", "hold"]


@dataclass
class FaultConfig:
    """Fault rates per attempt (their sum at most 1), decided by hash of (seed, id, attempt)."""

    seed: int = 0
    error_500_rate: float = 0.0
    error_429_rate: float = 0.0
    slow_rate: float = 0.0
    malformed_rate: float = 0.0
    retry_after: str | None = None  # Retry-After header sent with each 429
    slow_s: float = 2.0  # how long a "slow" answer takes (tests set it beyond the client's timeout)
    latency_s: float = 0.0  # every answer takes at least this long
    context_window: int | None = None  # prompt words + max_tokens above this: vLLM's 400
    script: dict[str, list[Outcome]] = field(default_factory=dict)  # per-id outcomes, attempt by attempt
    hold_after: int | None = None  # let this many requests through, then hold every one until release()
    models: tuple[str, ...] = ("fake-model",)


def request_id(body: dict[str, Any]) -> str:
    if "messages" in body:
        return str(body["messages"][-1]["content"])
    return str(body.get("prompt", ""))


def answer_text(body: dict[str, Any], choice: int) -> str:
    """What the upstream answers: a pure function of the request, so reruns compare equal."""
    rid = request_id(body)
    return f"answer {choice} to {rid} t={body.get('temperature')} seed={body.get('seed')}"


class FaultServer:
    """A FastAPI app speaking /v1/models, /v1/chat/completions, /v1/completions, with scripted faults."""

    def __init__(self, config: FaultConfig | None = None) -> None:
        self.config = config or FaultConfig()
        self.counts: Counter[str] = Counter()  # requests received per id
        self.answered: Counter[str] = Counter()  # successful answers sent per id
        self.arrivals: dict[str, list[float]] = {}  # monotonic arrival times per id
        self.bodies: dict[str, dict[str, Any]] = {}  # last body per id
        self.model_lists = 0
        self.admitted = 0  # requests let through while hold_after is set
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._release = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.app = self._build()

    def outcome(self, rid: str, attempt: int) -> Outcome:
        """The fault for attempt `attempt` (1-based) of request `rid`: the client-side oracle."""
        c = self.config
        script = c.script.get(rid)
        if script is not None:
            return script[attempt - 1] if attempt <= len(script) else "ok"
        r = random.Random(f"{c.seed}|{rid}|{attempt}").random()
        for rate, kind in (
            (c.error_500_rate, "500"),
            (c.error_429_rate, "429"),
            (c.slow_rate, "slow"),
            (c.malformed_rate, "malformed"),
        ):
            if r < rate:
                return kind  # type: ignore[return-value]
            r -= rate
        return "ok"

    def release(self) -> None:
        """Let held requests go (they are answered 503 and not counted as answered)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._release.set)

    def snapshot(self) -> tuple[Counter[str], Counter[str]]:
        with self._lock:
            return Counter(self.counts), Counter(self.answered)

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/models")
        async def models() -> Response:
            with self._lock:
                self.model_lists += 1
            data = [{"id": m, "object": "model", "owned_by": "test"} for m in self.config.models]
            return JSONResponse({"object": "list", "data": data})

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            return await self._handle(request, chat=True)

        @app.post("/v1/completions")
        async def completions(request: Request) -> Response:
            return await self._handle(request, chat=False)

        return app

    async def _handle(self, request: Request, *, chat: bool) -> Response:
        self._loop = asyncio.get_running_loop()
        body = json.loads(await request.body())
        rid = request_id(body)
        with self._lock:
            self.counts[rid] += 1
            attempt = self.counts[rid]
            self.arrivals.setdefault(rid, []).append(time.monotonic())
            self.bodies[rid] = body
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            # Counted at arrival, not at answer time: exactly `hold_after` requests get through even
            # when several are in flight as the limit is reached.
            held = self.config.hold_after is not None and self.admitted >= self.config.hold_after
            self.admitted += not held
        try:
            if held:
                await self._release.wait()
                return JSONResponse({"error": {"message": "released"}}, status_code=503)
            return await self._respond(body, rid, self.outcome(rid, attempt), chat=chat)
        finally:
            with self._lock:
                self.in_flight -= 1

    async def _respond(self, body: dict[str, Any], rid: str, outcome: Outcome, *, chat: bool) -> Response:
        c = self.config
        if c.latency_s:
            await asyncio.sleep(c.latency_s)
        if outcome == "500":
            return JSONResponse({"error": {"message": "injected failure", "type": "server_error"}}, 500)
        if outcome == "429":
            headers = {"Retry-After": c.retry_after} if c.retry_after is not None else {}
            return JSONResponse({"error": {"message": "slow down", "type": "rate_limit"}}, 429, headers)
        if outcome == "slow":
            await asyncio.sleep(c.slow_s)
        if outcome == "malformed":
            variant = random.Random(f"{c.seed}|{rid}|malformed").randrange(4)
            if variant == 0:
                return Response(b'{"choices": [{"text": "trunc', media_type="application/json")
            if variant == 1:
                return PlainTextResponse("<html>bad gateway</html>")
            if variant == 2:
                return JSONResponse({"object": "chat.completion", "id": "x"})
            return JSONResponse({"choices": [{"index": 0, "message": {"content": 5}, "text": 5}]})
        prompt_words = len(rid.split())
        max_tokens = int(body.get("max_tokens") or 16)
        if outcome == "400":
            message = "'temperature' must be a number"
            return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}}, 400)
        if c.context_window is not None and prompt_words + max_tokens > c.context_window:
            message = (
                f"This model's maximum context length is {c.context_window} tokens. However, you "
                f"requested {prompt_words + max_tokens} tokens ({prompt_words} in the messages, "
                f"{max_tokens} in the completion). Please reduce the length of the messages or completion."
            )
            vllm_error = {"object": "error", "message": message, "type": "BadRequestError", "code": 400}
            return JSONResponse(vllm_error, 400)
        choices = []
        for j in range(int(body.get("n") or 1)):
            words = answer_text(body, j).split(" ")
            finish = "length" if len(words) > max_tokens else "stop"
            choices.append((" ".join(words[:max_tokens]), finish))
        if body.get("stream"):
            return StreamingResponse(
                self._sse(body, choices[0][0], chat=chat, midstream=outcome == "midstream")
            )
        with self._lock:
            self.answered[rid] += 1
        usage = {
            "prompt_tokens": prompt_words,
            "completion_tokens": sum(len(t.split()) for t, _ in choices),
        }
        if chat:
            out = [
                {"index": j, "message": {"role": "assistant", "content": t}, "finish_reason": f}
                for j, (t, f) in enumerate(choices)
            ]
            # Reversed on purpose: clients must order choices by index, not by position.
            return JSONResponse({"object": "chat.completion", "choices": out[::-1], "usage": usage})
        out = [{"index": j, "text": t, "finish_reason": f} for j, (t, f) in enumerate(choices)]
        return JSONResponse({"object": "text_completion", "choices": out[::-1], "usage": usage})

    async def _sse(
        self, body: dict[str, Any], text: str, *, chat: bool, midstream: bool
    ) -> AsyncIterator[bytes]:
        rid = request_id(body)
        for i, word in enumerate(text.split(" ")):
            piece = word if i == 0 else " " + word
            if chat:
                choice: dict[str, Any] = {"index": 0, "delta": {"content": piece}, "finish_reason": None}
                event = {
                    "id": "c",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": "m",
                    "choices": [choice],
                }
            else:
                choice = {"index": 0, "text": piece, "finish_reason": None}
                event = {
                    "id": "c",
                    "object": "text_completion",
                    "created": 0,
                    "model": "m",
                    "choices": [choice],
                }
            yield b"data: " + json.dumps(event).encode() + b"\n\n"
            await asyncio.sleep(0.001)
            if midstream:
                yield b'data: {"error": {"message": "upstream died", "type": "server_error"}}\n\n'
                return
        with self._lock:
            self.answered[rid] += 1
        yield b"data: [DONE]\n\n"


# -- running an ASGI app on a loopback port ---------------------------------------------------------


class ServerThread:
    """`with ServerThread(app) as url:` serves `app` on 127.0.0.1:<free port> from a background thread."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._thread: threading.Thread | None = None
        self._server: uvicorn.Server | None = None
        self._sock: socket.socket | None = None
        self.url = ""

    def __enter__(self) -> str:
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP;
        # without it each response waits ~40 ms for a delayed ACK.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))  # the OS picks a free port: no race with other tests
        sock.listen(1024)
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1, access_log=False
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.01)
        self._sock = sock
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._sock is not None:
            self._sock.close()


# -- the CLI over a scripted backend -----------------------------------------------------------------


def cli_app() -> typer.Typer:
    """A root command group built as labalign's, with `serve` and `chat` registered."""
    app = typer.Typer(cls=_Group, pretty_exceptions_enable=False)

    @app.callback()
    def root(ctx: typer.Context) -> None:
        ctx.obj = CliState()

    register(app)
    return app


def patch_resolver(monkeypatch: pytest.MonkeyPatch) -> tuple[ScriptedBackend, list[str]]:
    """Make every model spec open one ScriptedBackend; returns it and the list of specs opened."""
    scripted = ScriptedBackend()
    opened: list[str] = []

    def open_backend(spec: str, *, settings: LLMSettings, cache_dir: Path) -> ScriptedBackend:
        assert isinstance(settings, LLMSettings) and isinstance(cache_dir, Path)
        opened.append(spec)
        return scripted

    monkeypatch.setattr(labalign.llm.resolve, "open_backend", open_backend)
    return scripted, opened


class RuleBackend:
    """A backend that answers every request with `rule(request)` and keeps the requests it saw."""

    def __init__(self, rule: Callable[[LLMRequest], str], identity: str = "judge:v1") -> None:
        self.rule, self._identity = rule, identity
        self.seen: list[LLMRequest] = []

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def context_window(self) -> int | None:
        return None

    async def generate(
        self, requests: Sequence[LLMRequest], *, on_result: ResultCallback | None = None
    ) -> list[LLMResult]:
        out = []
        for r in requests:
            self.seen.append(r)
            result = LLMResult(r, (Choice(self.rule(r), "stop"),))
            if on_result is not None:
                on_result(result)
            out.append(result)
        return out

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        yield self.rule(request)

    async def aclose(self) -> None:
        return None
