"""A model behind an OpenAI-compatible HTTP API (vLLM, llama.cpp server, Ollama, hosted services).

Every attempt is ours: the SDK's own retries are off so that attempts are counted, bounded and
reported per request, with full-jitter backoff and the server's Retry-After honoured. Bodies are
parsed here rather than by the SDK's lenient models, so a malformed answer is detected, not half-read.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import random
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit, urlunsplit

import openai

from labalign.errors import LabalignError
from labalign.llm.chat_template import DEFAULT_STOP
from labalign.llm.retry import (
    MAX_BAD_RESPONSE_ATTEMPTS,
    RETRYABLE,
    is_context_length_message,
    kind_for_status,
    parse_retry_after,
    retry_wait,
)
from labalign.llm.types import (
    Choice,
    ErrorKind,
    LLMCallError,
    LLMError,
    LLMRequest,
    LLMResult,
    Message,
    ResultCallback,
)
from labalign.redact import redact_text
from labalign.settings.llm import LLMSettings

T = TypeVar("T")

_URL_HINT = "use the server's OpenAI-compatible base URL, e.g. http://localhost:8000/v1"


def normalize_base_url(base_url: str) -> str:
    """Check an http(s) URL and give it the conventional `/v1` path when it has none."""
    text = base_url.strip()
    try:
        parts = urlsplit(text)
        port = parts.port  # raises ValueError on a bad port
    except ValueError as exc:
        raise LabalignError(f"not a valid server URL: {base_url!r} ({exc})", hint=_URL_HINT) from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LabalignError(f"not an http(s) server URL: {base_url!r}", hint=_URL_HINT)
    if parts.query or parts.fragment:
        raise LabalignError(f"a server URL takes no query or fragment: {base_url!r}", hint=_URL_HINT)
    del port
    path = parts.path.rstrip("/") or "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def is_loopback_host(host: str) -> bool:
    """True for localhost and loopback addresses (the only hosts a key-less default is safe for)."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def render_default_chat(messages: Sequence[Message]) -> str:
    """labalign's default chat template as plain text, for servers that only offer /v1/completions.

    Same text as `DEFAULT_CHAT_TEMPLATE` minus the BOS token, which the server's tokenizer adds.
    """
    turns = "".join(f"<|{m.role}|>\n{m.content}<|end|>\n" for m in messages)
    return turns + "<|assistant|>\n"


class _Failure(Exception):
    """One failed attempt: its kind, and how long the server asked us to wait."""

    def __init__(self, kind: ErrorKind, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.message = message
        self.retry_after = retry_after


class _GaveUp(Exception):
    """The last failure of a call that will not be tried again, and how many attempts it had."""

    def __init__(self, failure: _Failure, attempts: int) -> None:
        super().__init__(failure.message)
        self.failure = failure
        self.attempts = attempts

    def call_error(self, context: str = "") -> LLMCallError:
        return LLMCallError(LLMError(self.failure.kind, context + self.failure.message, self.attempts))


def _internal(exc: Exception) -> _Failure:
    return _Failure("internal", f"{type(exc).__name__}: {exc}")


@dataclass
class _LoopState:
    """What must not cross event loops: an httpx pool's connections and a semaphore bind to one loop."""

    client: openai.AsyncOpenAI
    semaphore: asyncio.Semaphore
    model_lock: asyncio.Lock
    closer: AsyncGenerator[None, None]


async def _close_at_loop_end(client: openai.AsyncOpenAI) -> AsyncGenerator[None, None]:
    """Started once per loop and left suspended: `asyncio.run` closes unfinished async generators
    before it closes the loop, so the pool is closed while its loop still runs, even when the caller
    never awaits `aclose()` (otherwise the dead loop's sockets error out at garbage collection)."""
    try:
        yield
    finally:
        await client.close()


class OpenAIBackend:
    """`Backend` over an OpenAI-compatible server: bounded concurrency, retries, per-request timeout."""

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        settings: LLMSettings | None = None,
    ) -> None:
        self._settings = settings if settings is not None else LLMSettings()
        self.base_url = normalize_base_url(base_url)
        self._model = model or self._settings.model_name
        host = urlsplit(self.base_url).hostname or ""
        key = api_key if api_key is not None else os.environ.get(self._settings.api_key_env)
        if not key:
            # Hosted services need a key; a local server (vLLM, llama.cpp) ignores it, and the SDK
            # insists on one, so give it the placeholder vLLM's docs use.
            if urlsplit(self.base_url).scheme == "https" and not is_loopback_host(host):
                env = self._settings.api_key_env
                raise LabalignError(
                    f"no API key for {redact_text(self.base_url)}: the environment variable {env} is not set",
                    hint=f"export {env}=<key> (any value, e.g. EMPTY, for a server without authentication)",
                )
            key = "EMPTY"
        self._api_key = key
        self._rng = random.Random()
        self._states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = (
            weakref.WeakKeyDictionary()
        )

    # -- Backend interface -------------------------------------------------------------------------

    @property
    def identity(self) -> str:
        """`openai:{base_url}:{model}`. Inside an event loop, await `identify()` first when the model is
        not configured; outside one, this lists the server's models once itself."""
        if self._model is None:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                self._resolve_model_outside_loop()
            else:
                raise RuntimeError("OpenAIBackend.identity inside an event loop: await identify() first")
        return self._identity_of(self._model)

    async def identify(self) -> str:
        """The identity, asking the server for its model (asynchronously) when none is configured."""
        return self._identity_of(await self.resolve_model())

    def _identity_of(self, model: str | None) -> str:
        suffix = "" if self._settings.use_chat_endpoint else ":default-template"
        return f"openai:{redact_text(self.base_url)}:{model}{suffix}"  # a cache key: no credentials

    @property
    def context_window(self) -> int | None:
        # The OpenAI API does not say; vLLM's /v1/models has max_model_len, but not every server does.
        return None

    @property
    def model(self) -> str | None:
        """The model requested from the server, once known."""
        return self._model

    async def generate(
        self, requests: Sequence[LLMRequest], *, on_result: ResultCallback | None = None
    ) -> list[LLMResult]:
        """One result per request in request order; `on_result` runs as each one completes."""
        todo = list(requests)
        results: list[LLMResult | None] = [None] * len(todo)
        if not todo:
            return []
        state = await self._state()
        try:
            model = await self.resolve_model()
        except LLMCallError as exc:
            failed = [LLMResult(request=r, error=exc.error) for r in todo]
            for result in failed:
                if on_result is not None:
                    on_result(result)
            return failed

        indices = iter(range(len(todo)))

        async def worker() -> None:
            # The shared iterator hands each index to exactly one worker (no await inside next()).
            for i in indices:
                result = await self._run_one(state, todo[i], model)
                results[i] = result
                if on_result is not None:
                    on_result(result)

        # A fixed pool rather than one task per request: a 100k-request batch stays cheap in memory.
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(len(todo), self._settings.max_concurrency)):
                    group.create_task(worker())
        except ExceptionGroup as failed:
            # Only on_result can raise here (e.g. the cache's disk is full): the batch stops, and
            # the caller sees that exception itself rather than a group around it.
            raise failed.exceptions[0] from None
        return [r for r in results if r is not None]

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        """Text deltas of one choice; retried only until the first delta (after that, it raises)."""
        state = await self._state()
        model = await self.resolve_model()
        single = replace(request, params=replace(request.params, n=1))

        async def opened() -> tuple[contextlib.AsyncExitStack, str | None, AsyncIterator[str]]:
            stack = contextlib.AsyncExitStack()
            try:
                await stack.enter_async_context(state.semaphore)
                # aclosing: a consumer that stops early must close the HTTP stream now, not at GC.
                pieces = await stack.enter_async_context(
                    contextlib.aclosing(self._stream_attempt(state, single, model))
                )
                return stack, await anext(pieces, None), pieces
            except BaseException:
                await stack.aclose()
                raise

        try:
            (stack, first, pieces), attempts = await self._retrying(opened)
        except _GaveUp as gave_up:
            raise gave_up.call_error() from None
        async with stack:
            if first is None:
                return
            yield first
            try:
                async for piece in pieces:
                    yield piece
            except Exception as exc:  # once text is out, a retry would repeat it: the caller gets it
                failure = exc if isinstance(exc, _Failure) else _internal(exc)
                raise LLMCallError(LLMError(failure.kind, failure.message, attempts)) from None

    async def aclose(self) -> None:
        """Close the connection pool of the running loop (other loops close theirs as they end)."""
        state = self._states.pop(asyncio.get_running_loop(), None)
        if state is not None:
            await state.closer.aclose()

    # -- model name --------------------------------------------------------------------------------

    async def resolve_model(self) -> str:
        """The configured model, or the first one the server lists (asked once, then remembered)."""
        if self._model is not None:
            return self._model
        state = await self._state()
        async with state.model_lock:
            if self._model is None:
                self._model = await self._list_first_model(state)
        return self._model

    async def _list_first_model(self, state: _LoopState) -> str:
        timeout = self._settings.request_timeout_s

        async def listed() -> str:
            try:
                async with state.semaphore, asyncio.timeout(timeout):
                    raw = await _call(state.client.models.with_raw_response.list())
            except TimeoutError:
                raise _Failure("timeout", f"no model list within {timeout:g} s") from None
            return _first_model(raw.content)

        try:
            model, _ = await self._retrying(listed)
        except _GaveUp as gave_up:
            raise gave_up.call_error(f"listing models at {redact_text(self.base_url)}: ") from None
        return model

    def _resolve_model_outside_loop(self) -> None:
        """For the synchronous `identity` outside any event loop: one short-lived loop lists the models."""

        async def resolve() -> None:
            try:
                await self.resolve_model()
            finally:
                await self.aclose()

        try:
            asyncio.run(resolve())
        except LLMCallError as exc:
            raise LabalignError(
                f"cannot list the models of {redact_text(self.base_url)}: {exc.error.message}",
                hint="is the server running? Or name the model in settings llm.model_name",
            ) from None

    # -- one request -------------------------------------------------------------------------------

    async def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is None:
            client = openai.AsyncOpenAI(
                base_url=self.base_url,
                api_key=self._api_key,
                max_retries=0,
                timeout=self._settings.request_timeout_s,
            )
            closer = _close_at_loop_end(client)
            await anext(closer)
            state = _LoopState(
                client=client,
                semaphore=asyncio.Semaphore(self._settings.max_concurrency),
                model_lock=asyncio.Lock(),
                closer=closer,
            )
            self._states[loop] = state
        return state

    def _should_retry(self, failure: _Failure, attempts: int, bad_bodies: int) -> bool:
        if failure.kind not in RETRYABLE or attempts >= self._settings.max_attempts:
            return False
        return bad_bodies < MAX_BAD_RESPONSE_ATTEMPTS

    def _wait(self, attempts: int, failure: _Failure) -> float:
        return retry_wait(
            attempts - 1,
            retry_after=failure.retry_after,
            base_s=self._settings.backoff_base_s,
            max_s=self._settings.backoff_max_s,
            rng=self._rng,
        )

    async def _retrying(self, attempt: Callable[[], Awaitable[T]]) -> tuple[T, int]:
        """`attempt()` again after each retryable failure, waiting out backoff or Retry-After, until it
        succeeds (its value and the attempts it took) or gives up (_GaveUp with the last failure). The
        one retry loop of this backend: requests, streams and the model list all go through it."""
        attempts = 0
        bad_bodies = 0
        while True:
            attempts += 1
            try:
                return await attempt(), attempts
            except _Failure as exc:
                failure = exc
            except Exception as exc:  # a bug below us fails this call, not the batch
                failure = _internal(exc)
            bad_bodies += failure.kind == "bad_response"
            if not self._should_retry(failure, attempts, bad_bodies):
                raise _GaveUp(failure, attempts)
            await asyncio.sleep(self._wait(attempts, failure))

    async def _run_one(self, state: _LoopState, request: LLMRequest, model: str) -> LLMResult:
        timeout = self._settings.request_timeout_s

        async def answered() -> tuple[tuple[Choice, ...], int, int]:
            try:
                # The slot is held for the attempt only: a request waiting out its backoff leaves it
                # to others. The timeout starts once the slot is ours, so queueing is not counted.
                async with state.semaphore:
                    async with asyncio.timeout(timeout):
                        return await self._attempt(state, request, model)
            except TimeoutError:
                raise _Failure("timeout", f"no answer within {timeout:g} s") from None

        try:
            (choices, prompt_tokens, completion_tokens), _ = await self._retrying(answered)
        except _GaveUp as gave_up:
            return LLMResult(request=request, error=gave_up.call_error().error)
        return LLMResult(
            request=request, choices=choices, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
        )

    def _endpoint_args(self, request: LLMRequest, model: str) -> tuple[bool, dict[str, Any]]:
        """(use chat endpoint, keyword arguments of the SDK call) for one request."""
        p = request.params
        stop = list(p.stop)
        args: dict[str, Any] = {
            "model": model,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "max_tokens": p.max_tokens,
            "n": p.n,
        }
        if p.seed is not None:
            args["seed"] = p.seed
        if request.messages is not None and self._settings.use_chat_endpoint:
            args["messages"] = [{"role": m.role, "content": m.content} for m in request.messages]
            chat = True
        else:
            if request.messages is not None:
                args["prompt"] = render_default_chat(request.messages)
                stop += [s for s in DEFAULT_STOP if s not in stop]
            else:
                args["prompt"] = request.prompt
            chat = False
        if stop:
            args["stop"] = stop
        return chat, args

    async def _attempt(
        self, state: _LoopState, request: LLMRequest, model: str
    ) -> tuple[tuple[Choice, ...], int, int]:
        chat, args = self._endpoint_args(request, model)
        if chat:
            raw = await _call(state.client.chat.completions.with_raw_response.create(**args))
        else:
            raw = await _call(state.client.completions.with_raw_response.create(**args))
        return _parse_completion(raw.content, chat=chat)

    async def _stream_attempt(
        self, state: _LoopState, request: LLMRequest, model: str
    ) -> AsyncGenerator[str, None]:
        chat, args = self._endpoint_args(request, model)
        timeout = self._settings.request_timeout_s
        try:
            async with asyncio.timeout(timeout):
                if chat:
                    events: Any = await _call(state.client.chat.completions.create(stream=True, **args))
                else:
                    events = await _call(state.client.completions.create(stream=True, **args))
        except TimeoutError:
            raise _Failure("timeout", f"no answer within {timeout:g} s") from None
        try:
            iterator = events.__aiter__()
            while True:
                # Each wait for the next event is bounded, not the whole answer: a long answer that
                # keeps coming is fine, a stalled one is not.
                try:
                    async with asyncio.timeout(timeout):
                        chunk = await anext(iterator)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise _Failure("timeout", f"stream stalled for {timeout:g} s") from None
                except openai.OpenAIError as exc:
                    _raise_failure(exc)
                except Exception as exc:  # the SDK's SSE decoding of a malformed event
                    raise _Failure("bad_response", f"unreadable stream event: {exc}") from None
                piece = _chunk_text(chunk, chat=chat)
                if piece:
                    yield piece
        finally:
            await events.close()


async def _call(awaitable: Any) -> Any:
    """Await an SDK call, turning its exceptions into one `_Failure` per attempt."""
    try:
        return await awaitable
    except TimeoutError:
        raise
    except openai.OpenAIError as exc:
        _raise_failure(exc)


def _raise_failure(exc: openai.OpenAIError) -> NoReturn:
    if isinstance(exc, openai.APITimeoutError):
        raise _Failure("timeout", "request timed out") from None
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        detail = f": {cause}" if cause is not None and str(cause) else ""
        raise _Failure("connection", f"cannot reach the server{detail}") from None
    if isinstance(exc, openai.APIStatusError):
        message = _error_message(exc.body, exc.message)
        kind = kind_for_status(exc.status_code, message)
        if exc.code == "context_length_exceeded":
            kind = "context_length"
        if exc.status_code in (401, 403):
            message += " (check the API key: settings llm.api_key_env names its environment variable)"
        retry_after = parse_retry_after(_headers(exc.response.headers)) if kind in RETRYABLE else None
        raise _Failure(kind, f"HTTP {exc.status_code}: {message}", retry_after) from None
    if isinstance(exc, openai.APIError):  # e.g. an error event inside a stream
        message = _error_message(exc.body, exc.message)
        kind = "context_length" if is_context_length_message(message) else "server"
        raise _Failure(kind, message) from None
    raise _Failure("internal", f"{type(exc).__name__}: {exc}") from None


def _headers(headers: Any) -> Mapping[str, str]:
    return {str(k): str(v) for k, v in headers.items()}


def _error_message(body: object, fallback: str) -> str:
    """The server's own error text: OpenAI/vLLM `{"error": {"message"}}`, `{"message"}` or `{"detail"}`."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            for key in ("message", "detail"):
                if isinstance(inner.get(key), str):
                    return str(inner[key])
        if isinstance(inner, str):
            return inner
    return fallback


def _load_json(content: bytes) -> dict[str, Any]:
    try:
        data = json.loads(content)
    except (ValueError, UnicodeDecodeError) as exc:
        snippet = content[:80].decode("utf-8", "replace")
        raise _Failure("bad_response", f"response is not JSON ({exc}): {snippet!r}") from None
    if not isinstance(data, dict):
        raise _Failure("bad_response", f"response is JSON but not an object: {type(data).__name__}")
    return data


def _first_model(content: bytes) -> str:
    data = _load_json(content)
    models = data.get("data")
    if not isinstance(models, list):
        raise _Failure("bad_response", "model list has no 'data' array")
    for entry in models:
        if isinstance(entry, dict) and isinstance(entry.get("id"), str) and entry["id"]:
            return str(entry["id"])
    raise _Failure("invalid_request", "the server lists no model; name one in settings llm.model_name")


def _parse_completion(content: bytes, *, chat: bool) -> tuple[tuple[Choice, ...], int, int]:
    """Choices (ordered by index) and token counts of a (chat) completion body, or `_Failure`."""
    data = _load_json(content)
    if data.get("error"):
        raise _Failure("server", f"error in a 200 response: {_error_message(data, str(data['error']))}")
    raw_choices = data.get("choices")
    if not isinstance(raw_choices, list) or not raw_choices:
        raise _Failure("bad_response", "response has no choices")
    indexed: list[tuple[int, Choice]] = []
    for position, raw in enumerate(raw_choices):
        if not isinstance(raw, dict):
            raise _Failure("bad_response", "a choice is not an object")
        if chat:
            message = raw.get("message")
            if not isinstance(message, dict):
                raise _Failure("bad_response", "a chat choice has no message")
            text = message.get("content")
            text = "" if text is None else text  # content is null for refusals and tool calls
        else:
            text = raw.get("text")
        if not isinstance(text, str):
            raise _Failure("bad_response", "a choice's text is not a string")
        finish = raw.get("finish_reason")
        index = raw.get("index", position)
        indexed.append(
            (
                index if isinstance(index, int) else position,
                Choice(text=text, finish_reason=finish if isinstance(finish, str) else None),
            )
        )
    indexed.sort(key=lambda pair: pair[0])
    usage = data.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    prompt_tokens = usage.get("prompt_tokens")
    completion_tokens = usage.get("completion_tokens")
    return (
        tuple(choice for _, choice in indexed),
        prompt_tokens if isinstance(prompt_tokens, int) else 0,
        completion_tokens if isinstance(completion_tokens, int) else 0,
    )


def _chunk_text(chunk: Any, *, chat: bool) -> str:
    choices = getattr(chunk, "choices", None)
    if not choices:
        return ""  # e.g. the final usage-only chunk
    first = choices[0]
    if chat:
        delta = getattr(first, "delta", None)
        text = getattr(delta, "content", None)
    else:
        text = getattr(first, "text", None)
    if text is not None and not isinstance(text, str):
        raise _Failure("bad_response", "a stream event's text is not a string")
    return text or ""
