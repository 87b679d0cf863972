"""The one interface every model sits behind: a batch of requests in, one result per request out.

Teachers, judges, the student under evaluation and `serve`/`chat` all talk to models through
`Backend`. A request that fails yields a result carrying an `LLMError` for that request alone: one
bad request never sinks a batch.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from labalign.redact import redact_text

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True)
class GenerationParams:
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 512
    stop: tuple[str, ...] = ()
    seed: int | None = None
    n: int = 1  # choices per request


@dataclass(frozen=True)
class LLMRequest:
    """A chat request (`messages`) or a raw completion request (`prompt`), never both.

    `sample_index` tells apart deliberate repeats of the same request (sample i of N at temperature
    > 0): it is part of the cache key, so a resumed run gets back exactly the same i-th answer.
    `tag` is free-form provenance for the caller (leaf, stage...) and is not part of the key.
    """

    messages: tuple[Message, ...] | None = None
    prompt: str | None = None
    params: GenerationParams = field(default_factory=GenerationParams)
    sample_index: int = 0
    tag: str = ""

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("an LLMRequest has either messages or a prompt")

    @property
    def is_chat(self) -> bool:
        return self.messages is not None

    def key_payload(self) -> dict[str, Any]:
        """Everything that determines the answer, in a canonical JSON-able form."""
        return {
            "messages": [asdict(m) for m in self.messages] if self.messages is not None else None,
            "prompt": self.prompt,
            "params": {**asdict(self.params), "stop": list(self.params.stop)},
            "sample_index": self.sample_index,
        }

    def cache_key(self, model_identity: str) -> str:
        """sha256 of model identity + request; stable across processes and Python versions."""
        blob = json.dumps(
            {"model": model_identity, **self.key_payload()},
            sort_keys=True,
            ensure_ascii=False,
            separators=(",", ":"),
        )
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


ErrorKind = Literal[
    "connection",  # could not reach the server
    "timeout",
    "rate_limited",  # 429 after all retries
    "server",  # 5xx after all retries
    "invalid_request",  # 4xx other than 429: retrying will not help
    "context_length",  # prompt + max_tokens over the model's window
    "bad_response",  # a body that could not be parsed
    "internal",  # an exception inside an in-process backend
    "unavailable",  # a server refusing work for now (overloaded, shutting down)
]


@dataclass(frozen=True)
class LLMError:
    kind: ErrorKind
    message: str
    attempts: int = 1

    def __post_init__(self) -> None:
        # Failures are stored in samples and reports; a server's message may quote its URL.
        object.__setattr__(self, "message", redact_text(self.message))


class LLMCallError(Exception):
    """Raised by `Backend.stream()` when its request fails (`generate` reports errors in results instead)."""

    def __init__(self, error: LLMError) -> None:
        super().__init__(f"{error.kind}: {error.message}")
        self.error = error


@dataclass(frozen=True)
class Choice:
    text: str
    finish_reason: str | None  # "stop", "length", ...


@dataclass(frozen=True)
class LLMResult:
    request: LLMRequest
    choices: tuple[Choice, ...] = ()
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: LLMError | None = None
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.choices)

    @property
    def text(self) -> str:
        """The first choice's text ('' for a failed request)."""
        return self.choices[0].text if self.choices else ""


ResultCallback = Callable[[LLMResult], None]


@runtime_checkable
class Backend(Protocol):
    """A model behind the common interface. Implementations: openai-compatible, llama.cpp, transformers."""

    @property
    def identity(self) -> str:
        """Stable id of the model and its weights (cache key part), e.g. 'llamacpp:sha256:…'."""
        ...

    @property
    def context_window(self) -> int | None:
        """Tokens the model accepts (prompt + completion), when known."""
        ...

    async def generate(
        self, requests: Sequence[LLMRequest], *, on_result: ResultCallback | None = None
    ) -> list[LLMResult]:
        """One result per request, in request order; `on_result` is called as each one completes."""
        ...

    def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        """Text deltas of the first choice as they are produced (for chat and SSE serving)."""
        ...

    async def aclose(self) -> None:
        """Release connections, threads and model memory."""
        ...


async def resolve_identity(backend: Backend) -> str:
    """The backend's identity without blocking the event loop: a backend that must ask a server for
    its model does so asynchronously (its `identify()`); the others may hash a model file, which runs
    in a thread."""
    identify = getattr(backend, "identify", None)
    if identify is not None:
        return str(await identify())
    return await asyncio.to_thread(lambda: backend.identity)
