"""The slice of the OpenAI HTTP API that `labalign serve` speaks: request models and response bodies."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from labalign.llm.types import ErrorKind, GenerationParams, LLMError, LLMRequest, LLMResult, Message

MAX_N = 16
MAX_STOP = 16
MAX_PROMPTS = 64


class _Lenient(BaseModel):
    # Clients send many fields we do not use (user, logit_bias, stream_options...): ignore them
    # rather than break the client, as vLLM does.
    model_config = ConfigDict(extra="ignore")


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class ChatMessageIn(_Lenient):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def as_message(self) -> Message:
        if self.content is None:
            text = ""
        elif isinstance(self.content, str):
            text = self.content
        else:
            text = "\n".join(part.text for part in self.content)
        # OpenAI's newer "developer" role is the system prompt under another name.
        return Message(role="system" if self.role == "developer" else self.role, content=text)


class StreamOptions(_Lenient):
    include_usage: bool = False


class _CommonRequest(_Lenient):
    model: str
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    def params(self, *, max_tokens_limit: int, default_max_tokens: int) -> GenerationParams:
        """Generation parameters, or ValueError for a limit the server will not honour."""
        wanted = self.max_completion_tokens or self.max_tokens
        if wanted is not None and wanted > max_tokens_limit:
            raise ValueError(f"max_tokens is {wanted}, over this server's limit of {max_tokens_limit}")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        if len(stop) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences")
        if any(s == "" for s in stop):
            raise ValueError("a stop sequence cannot be empty")
        return GenerationParams(
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=wanted if wanted is not None else min(default_max_tokens, max_tokens_limit),
            stop=stop,
            seed=self.seed,
            n=self.n,
        )

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatCompletionRequest(_CommonRequest):
    messages: list[ChatMessageIn] = Field(min_length=1)

    def to_llm(self, params: GenerationParams) -> list[LLMRequest]:
        return [LLMRequest(messages=tuple(m.as_message() for m in self.messages), params=params)]


class CompletionRequest(_CommonRequest):
    prompt: str | list[str]

    def to_llm(self, params: GenerationParams) -> list[LLMRequest]:
        prompts = [self.prompt] if isinstance(self.prompt, str) else self.prompt
        if not prompts:
            raise ValueError("prompt is an empty list")
        if len(prompts) > MAX_PROMPTS:
            raise ValueError(f"at most {MAX_PROMPTS} prompts per request")
        return [LLMRequest(prompt=p, params=params) for p in prompts]


def describe_validation_error(exc: ValidationError) -> tuple[str, str | None]:
    """(one-line message, offending parameter) of the first problem, in OpenAI's wording style."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "json_invalid":
        return f"request body is not valid JSON: {err['msg']}", None
    if not loc:
        return f"request body: {err['msg']}", None
    return f"'{loc}': {err['msg']}", loc


# -- errors ------------------------------------------------------------------------------------------

_STATUS: dict[ErrorKind, tuple[int, str, str]] = {
    "rate_limited": (429, "rate_limit_error", "rate_limit_exceeded"),
    "timeout": (504, "timeout_error", "timeout"),
    "invalid_request": (400, "invalid_request_error", "invalid_request"),
    "context_length": (400, "invalid_request_error", "context_length_exceeded"),
    "bad_response": (502, "server_error", "bad_upstream_response"),
    "server": (502, "server_error", "upstream_error"),
    "connection": (502, "server_error", "upstream_unreachable"),
    "internal": (500, "server_error", "internal_error"),
    "unavailable": (503, "server_error", "server_unavailable"),
}


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}`."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def llm_error_status(error: LLMError) -> tuple[int, dict[str, Any]]:
    status, type_, code = _STATUS.get(error.kind, (500, "server_error", "internal_error"))
    return status, error_body(error.message, type_, code)


# -- responses ---------------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(results: list[LLMResult]) -> dict[str, int]:
    prompt = sum(r.prompt_tokens for r in results)
    completion = sum(r.completion_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def chat_response(model: str, results: list[LLMResult]) -> dict[str, Any]:
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": choice.text},
            "finish_reason": choice.finish_reason or "stop",
            "logprobs": None,
        }
        for i, choice in enumerate(c for r in results for c in r.choices)
    ]
    return {
        "id": new_id("chatcmpl"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage(results),
    }


def completion_response(model: str, results: list[LLMResult]) -> dict[str, Any]:
    # With several prompts and n choices each, choice p*n + j is prompt p's j-th answer (as OpenAI).
    choices = [
        {"index": i, "text": choice.text, "finish_reason": choice.finish_reason or "stop", "logprobs": None}
        for i, choice in enumerate(c for r in results for c in r.choices)
    ]
    return {
        "id": new_id("cmpl"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage(results),
    }


class ChunkWriter:
    """Builds the `data: {...}` events of one streamed answer, in OpenAI's chunk format."""

    def __init__(self, model: str, *, chat: bool) -> None:
        self.chat = chat
        self.model = model
        self.id = new_id("chatcmpl" if chat else "cmpl")
        self.created = int(time.time())

    def _event(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        body = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }
        return b"data: " + json.dumps(body, ensure_ascii=False).encode("utf-8") + b"\n\n"

    def role(self, index: int = 0) -> bytes:
        """A chat stream opens each choice by naming the assistant role."""
        return self._event(
            [{"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
        )

    def delta(self, text: str, index: int = 0) -> bytes:
        if self.chat:
            return self._event([{"index": index, "delta": {"content": text}, "finish_reason": None}])
        return self._event([{"index": index, "text": text, "finish_reason": None, "logprobs": None}])

    def finish(self, reason: str, index: int = 0) -> bytes:
        if self.chat:
            return self._event([{"index": index, "delta": {}, "finish_reason": reason}])
        return self._event([{"index": index, "text": "", "finish_reason": reason, "logprobs": None}])

    def usage(self, results: list[LLMResult]) -> bytes:
        return self._event([], usage=usage(results))

    @staticmethod
    def error(message: str, type_: str, code: str | None) -> bytes:
        return b"data: " + json.dumps(error_body(message, type_, code)).encode("utf-8") + b"\n\n"

    DONE = b"data: [DONE]\n\n"
