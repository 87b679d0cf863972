"""OpenAI-compatible HTTP server over any `Backend`: /v1/models, /v1/chat/completions, /v1/completions.

Every bad request gets a 4xx JSON error in OpenAI's shape, never a 500: the body is read with a size
cap, parsed and validated here, not by FastAPI's own (422) validation.
"""

from __future__ import annotations

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
from labalign.serve.batcher import Batcher
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
    batch_window_s: float = 0.005,
    close_backend: bool = False,
) -> FastAPI:
    """The server app. `api_key` set: every /v1 route wants `Authorization: Bearer <api_key>`.

    `batch_window_s`: requests arriving this close together share one `generate` batch (0: none).
    `close_backend`: close the backend when the app shuts down (the CLI owns its backend this way).
    """
    batcher = Batcher(backend, window_s=batch_window_s)
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
        except _Reject as exc:
            return JSONResponse(exc.body, status_code=exc.status)
        if parsed.stream and len(llm_requests) == 1 and parsed.n == 1:
            return await stream_one(llm_requests[0], chat=chat)
        results = await batcher.submit(llm_requests)
        error = failed(results)
        if error is not None:
            return error
        if parsed.stream:
            return StreamingResponse(
                replay(results, chat=chat, include_usage=parsed.include_usage),
                media_type="text/event-stream",
            )
        return JSONResponse(render(model_name, results))

    async def stream_one(llm_request: LLMRequest, *, chat: bool) -> Response:
        pieces = backend.stream(llm_request)
        # The first piece decides the status: an error before any text is a plain HTTP error.
        try:
            first: str | None = await anext(pieces)
        except StopAsyncIteration:
            first = None
        except LLMCallError as exc:
            await _aclose(pieces)
            status, body = llm_error_status(exc.error)
            return JSONResponse(body, status_code=status)
        except Exception as exc:
            await _aclose(pieces)
            status, body = llm_error_status(LLMError("internal", f"{type(exc).__name__}: {exc}"))
            return JSONResponse(body, status_code=status)
        writer = ChunkWriter(model_name, chat=chat)

        async def events() -> AsyncIterator[bytes]:
            try:
                if chat:
                    yield writer.role()
                if first:
                    yield writer.delta(first)
                if first is not None:
                    async for piece in pieces:
                        if piece:
                            yield writer.delta(piece)
                # Backend.stream carries no finish reason; "stop" is what clients expect at the end.
                yield writer.finish("stop")
            except LLMCallError as exc:
                _, body = llm_error_status(exc.error)
                err = body["error"]
                yield ChunkWriter.error(err["message"], err["type"], err["code"])
            except Exception as exc:  # the status is sent already: report in-band, as OpenAI does
                yield ChunkWriter.error(f"{type(exc).__name__}: {exc}", "server_error", "internal_error")
            finally:
                await _aclose(pieces)
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


async def _aclose(iterator: AsyncIterator[str]) -> None:
    close: Callable[[], Awaitable[None]] | None = getattr(iterator, "aclose", None)
    if close is not None:
        await close()
