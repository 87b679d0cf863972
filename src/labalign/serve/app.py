"""OpenAI-compatible HTTP server over any `Backend`: /v1/models, /v1/chat/completions, /v1/completions.

Every bad request gets a 4xx JSON error in OpenAI's shape, never a 500: the body is read with a size
cap, parsed and validated here, not by FastAPI's own (422) validation. Work is bounded: a request may
ask for at most `max_request_tokens` (prompts x n x max_tokens), work the server cannot finish within
`max_wait_s` is refused at once with 503 and Retry-After (serve.admission), a request whose client
disconnects is withdrawn, and `drain()` (on SIGTERM) answers what is left with 503 instead of leaving
it to be cancelled mid-flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from labalign.llm.types import Backend, LLMCallError, LLMError, LLMRequest, LLMResult
from labalign.serve.admission import Admission, Overloaded, Ticket
from labalign.serve.batcher import Batcher, budget_tokens
from labalign.serve.protocol import (
    ChatCompletionRequest,
    ChunkWriter,
    CompletionRequest,
    chat_response,
    completion_response,
    describe_validation_error,
    error_body,
    llm_error_status,
)

DEFAULT_MAX_TOKENS = 512
_Req = TypeVar("_Req", ChatCompletionRequest, CompletionRequest)


class _Reject(Exception):
    """A request we answer with an error status before touching the backend."""

    def __init__(self, status: int, message: str, code: str | None, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = error_body(
            message, "invalid_request_error" if status < 500 else "server_error", code, param
        )


def _json_error(status: int, message: str, type_: str, code: str | None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, code), status_code=status)


def create_app(
    backend: Backend,
    *,
    model_name: str,
    api_key: str | None,
    max_body_bytes: int = 1 << 20,
    max_tokens_limit: int = 4096,
    max_request_tokens: int = 16384,
    max_wait_s: float = 30.0,
    max_queue: int = 64,
    batch_window_s: float = 0.005,
    close_backend: bool = False,
) -> FastAPI:
    """The server app. `api_key` set: every /v1 route wants `Authorization: Bearer <api_key>`.

    `max_request_tokens`: the most one request may ask for, prompts x n x max_tokens (400 above).
    `max_wait_s`, `max_queue`: admission (serve.admission); refused requests get 503 and Retry-After.
    `batch_window_s`: requests arriving this close together share one `generate` batch (0: none).
    `close_backend`: close the backend when the app shuts down (the CLI owns its backend this way).
    The app's `state.drain(grace_s)` starts a quiet shutdown (what `labalign serve` calls on SIGTERM).
    """
    admission = Admission(max_wait_s=max_wait_s, max_queue=max_queue)
    batcher = Batcher(backend, window_s=batch_window_s, admission=admission)
    started = int(time.time())
    # A request without max_tokens must still fit a small model's window along with its prompt.
    window = backend.context_window
    default_max_tokens = max(1, min(DEFAULT_MAX_TOKENS, window // 2 if window else DEFAULT_MAX_TOKENS))

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await batcher.aclose()
            if close_backend:
                await backend.aclose()

    app = FastAPI(title="labalign", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    streams: set[asyncio.Event] = set()  # set one to end its stream early (drain)

    def drain(grace_s: float = 4.0) -> None:
        """Refuse new work, answer queued requests with 503 now and running ones after `grace_s`,
        so that no handler is still waiting when the server stops (no CancelledError tracebacks)."""
        admission.draining = True
        batcher.fail_waiting("the server is shutting down")

        def stop_running() -> None:
            batcher.fail_running("the server is shutting down")
            for stop in streams:
                stop.set()

        asyncio.get_running_loop().call_later(grace_s, stop_running)

    app.state.drain = drain

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
        # Unknown routes and methods, in OpenAI's error shape rather than FastAPI's {"detail"}.
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return _json_error(exc.status_code, str(exc.detail), "invalid_request_error", code)

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> Response:
        return _json_error(500, f"internal error: {type(exc).__name__}", "server_error", "internal_error")

    def authorized(request: Request) -> bool:
        if api_key is None:
            return True
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        # Constant-time comparison: the key must not leak through response timing.
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())

    def unauthorized() -> JSONResponse:
        return JSONResponse(
            error_body("missing or invalid API key", "invalid_request_error", "invalid_api_key"),
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise _Reject(400, "invalid Content-Length header", "invalid_request")
            if int(declared) > max_body_bytes:
                raise _Reject(413, f"request body over {max_body_bytes} bytes", "request_too_large")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:  # chunked uploads declare no length: count as it comes
                raise _Reject(413, f"request body over {max_body_bytes} bytes", "request_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    async def parse(request: Request, model_cls: type[_Req]) -> tuple[_Req, list[LLMRequest]]:
        body = await read_body(request)
        if not body.strip():
            raise _Reject(400, "request body is empty; send a JSON object", "invalid_request")
        try:
            parsed = model_cls.model_validate_json(body)
        except ValidationError as exc:
            message, param = describe_validation_error(exc)
            raise _Reject(400, message, "invalid_request", param) from None
        if parsed.model != model_name:
            message = f"the model '{parsed.model}' does not exist; this server has '{model_name}'"
            raise _Reject(404, message, "model_not_found", "model")
        try:
            params = parsed.params(max_tokens_limit=max_tokens_limit, default_max_tokens=default_max_tokens)
            llm_requests = parsed.to_llm(params)
        except ValueError as exc:
            raise _Reject(400, str(exc), "invalid_request") from None
        return parsed, llm_requests

    def failed(results: list[LLMResult]) -> Response | None:
        for result in results:
            if result.error is not None:
                status, body = llm_error_status(result.error)
                return JSONResponse(body, status_code=status)
            if not result.choices:
                status, body = llm_error_status(LLMError("internal", "the model returned no answer"))
                return JSONResponse(body, status_code=status)
        return None

    async def handle(
        request: Request,
        model_cls: type[_Req],
        render: Callable[[str, list[LLMResult]], dict[str, Any]],
        *,
        chat: bool,
    ) -> Response:
        if not authorized(request):
            return unauthorized()
        try:
            parsed, llm_requests = await parse(request, model_cls)
            ticket = admit(llm_requests)
        except _Reject as exc:
            return JSONResponse(exc.body, status_code=exc.status)
        except Overloaded as exc:
            return overloaded(exc)
        if parsed.stream and len(llm_requests) == 1 and parsed.n == 1:
            return await stream_one(llm_requests[0], ticket, chat=chat)
        try:
            results = await until_disconnect(request, batcher.submit(llm_requests))
        finally:
            admission.release(ticket)
        if results is None:  # the client left: nothing to answer
            return Response(status_code=499)
        error = failed(results)
        if error is not None:
            return error
        if parsed.stream:
            return StreamingResponse(
                replay(results, chat=chat, include_usage=parsed.include_usage),
                media_type="text/event-stream",
            )
        return JSONResponse(render(model_name, results))

    def admit(llm_requests: list[LLMRequest]) -> Ticket:
        prompts = len(llm_requests)
        tokens = budget_tokens(llm_requests)
        if tokens > max_request_tokens:
            n, max_tokens = llm_requests[0].params.n, llm_requests[0].params.max_tokens
            raise _Reject(
                400,
                f"this request asks for up to {tokens} tokens ({prompts} prompts x n={n} x max_tokens="
                f"{max_tokens}), over this server's limit of {max_request_tokens} per request; "
                "send fewer prompts or choices, or a smaller max_tokens",
                "request_too_large",
            )
        return admission.admit(sum(r.params.n for r in llm_requests), tokens)

    def overloaded(exc: Overloaded) -> JSONResponse:
        return JSONResponse(
            error_body(str(exc), "server_error", "server_overloaded"),
            status_code=503,
            headers={"Retry-After": str(exc.retry_after_s)},
        )

    async def until_disconnect(request: Request, work: Awaitable[list[LLMResult]]) -> list[LLMResult] | None:
        """`work`'s results, or None (and `work` cancelled, withdrawing its queued requests) if the
        client disconnects first."""
        task = asyncio.ensure_future(work)
        watch = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None

    async def stream_one(llm_request: LLMRequest, ticket: Ticket, *, chat: bool) -> Response:
        pieces = backend.stream(llm_request)
        stop = asyncio.Event()
        streams.add(stop)
        start = time.monotonic()

        async def finish() -> None:
            streams.discard(stop)
            admission.release(ticket)
            await _aclose(pieces)

        # The first piece decides the status: an error before any text is a plain HTTP error.
        try:
            first: str | None = await anext(pieces)
        except StopAsyncIteration:
            first = None
        except LLMCallError as exc:
            await finish()
            status, body = llm_error_status(exc.error)
            return JSONResponse(body, status_code=status)
        except Exception as exc:
            await finish()
            status, body = llm_error_status(LLMError("internal", f"{type(exc).__name__}: {exc}"))
            return JSONResponse(body, status_code=status)
        writer = ChunkWriter(model_name, chat=chat)

        async def events() -> AsyncIterator[bytes]:
            completed = False
            try:
                if chat:
                    yield writer.role()
                if first:
                    yield writer.delta(first)
                if first is not None:
                    async for piece in pieces:
                        if stop.is_set():
                            yield writer.finish("length")  # cut short by a shutdown
                            break
                        if piece:
                            yield writer.delta(piece)
                    else:
                        # Backend.stream carries no finish reason; "stop" is what clients expect.
                        yield writer.finish("stop")
                else:
                    yield writer.finish("stop")
                completed = True
            except LLMCallError as exc:
                _, body = llm_error_status(exc.error)
                err = body["error"]
                yield ChunkWriter.error(err["message"], err["type"], err["code"])
            except Exception as exc:  # the status is sent already: report in-band, as OpenAI does
                yield ChunkWriter.error(f"{type(exc).__name__}: {exc}", "server_error", "internal_error")
            finally:
                if completed:
                    admission.record(ticket.tokens, time.monotonic() - start)
                await finish()
            yield ChunkWriter.DONE

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    async def replay(results: list[LLMResult], *, chat: bool, include_usage: bool) -> AsyncIterator[bytes]:
        """n > 1 or several prompts: generated whole, then sent as one chunk per choice."""
        writer = ChunkWriter(model_name, chat=chat)
        choices = [c for r in results for c in r.choices]
        for index, choice in enumerate(choices):
            if chat:
                yield writer.role(index)
            yield writer.delta(choice.text, index)
            yield writer.finish(choice.finish_reason or "stop", index)
        if include_usage:
            yield writer.usage(results)
        yield ChunkWriter.DONE

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        if not authorized(request):
            return unauthorized()
        entry: dict[str, Any] = {
            "id": model_name,
            "object": "model",
            "created": started,
            "owned_by": "labalign",
        }
        if backend.context_window is not None:
            entry["max_model_len"] = backend.context_window  # as vLLM reports it
        return JSONResponse({"object": "list", "data": [entry]})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await handle(request, ChatCompletionRequest, chat_response, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await handle(request, CompletionRequest, completion_response, chat=False)

    return app


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone. The body is read already, so the next ASGI message is the
    disconnect (uvicorn sends it as soon as the connection closes)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _aclose(iterator: AsyncIterator[str]) -> None:
    close: Callable[[], Awaitable[None]] | None = getattr(iterator, "aclose", None)
    if close is not None:
        await close()
