"""TransformersBackend on a tiny random Llama: batching, seeds, stops, errors, templates, streaming."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytest.importorskip("transformers", reason="needs torch and transformers (the hf extra)")

from labalign.errors import LabalignError
from labalign.llm.chat_template import DEFAULT_CHAT_TEMPLATE, DEFAULT_STOP
from labalign.llm.hf import TransformersBackend, model_dir_identity, pick_dtype
from labalign.llm.local_queue import truncate_at_stop
from labalign.llm.types import (
    Backend,
    GenerationParams,
    LLMCallError,
    LLMRequest,
    LLMResult,
    Message,
)
from tests.tiny_models import tiny_llama_dir, tiny_tokenizer

GREEDY = GenerationParams(temperature=0.0, max_tokens=24)
PROMPTS = [
    "hello",
    "The capital of France is a long prompt that needs padding",
    "a",
    "Question: How many legs does a spider have?",
    "x y z",
    "The teacher model writes synthetic examples",
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama_dir(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def backend(model_dir: Path) -> Iterator[TransformersBackend]:
    b = TransformersBackend(model_dir, dtype="float32", batch_size=4)
    yield b
    asyncio.run(b.aclose())


def run(backend: Backend, requests: list[LLMRequest], **kwargs: Any) -> list[LLMResult]:
    return asyncio.run(backend.generate(requests, **kwargs))


def test_implements_backend_protocol(backend: TransformersBackend) -> None:
    assert isinstance(backend, Backend)
    assert backend.context_window == 256
    assert backend.identity.startswith("hf:")


def test_batched_greedy_equals_one_by_one(backend: TransformersBackend) -> None:
    requests = [LLMRequest(prompt=p, params=GREEDY) for p in PROMPTS]
    batched = run(backend, requests)
    single = [run(backend, [r])[0] for r in requests]
    assert [r.request for r in batched] == requests
    assert all(r.ok for r in batched)
    assert [(r.text, r.completion_tokens) for r in batched] == [(r.text, r.completion_tokens) for r in single]
    assert len({r.text for r in batched}) > 1  # different prompts, different continuations


def test_sampling_is_reproducible_and_independent_of_the_batch(backend: TransformersBackend) -> None:
    params = GenerationParams(temperature=1.0, max_tokens=16, seed=11, n=3)
    request = LLMRequest(prompt="hello", params=params)
    alone = run(backend, [request])[0]
    in_batch = run(backend, [LLMRequest(prompt=p, params=GREEDY) for p in PROMPTS[:3]] + [request])[-1]
    texts = [c.text for c in alone.choices]
    assert texts == [c.text for c in in_batch.choices]
    assert len(set(texts)) == 3  # the n choices are different samples
    other_seed = run(backend, [LLMRequest(prompt="hello", params=GenerationParams(1.0, 1.0, 16, seed=12))])[0]
    other_sample = run(backend, [LLMRequest(prompt="hello", params=params, sample_index=1)])[0]
    assert other_seed.text != texts[0]
    assert other_sample.text != texts[0]
    assert 0 < alone.completion_tokens <= 3 * 16


def test_n_choices_and_token_counts(backend: TransformersBackend) -> None:
    result = run(backend, [LLMRequest(prompt="hello", params=GenerationParams(1.0, 1.0, 10, seed=1, n=3))])[0]
    assert len(result.choices) == 3
    assert result.prompt_tokens == len(backend._tokenizer("hello")["input_ids"])
    assert result.completion_tokens <= 30
    assert all(c.finish_reason in ("stop", "length") for c in result.choices)
    greedy = run(backend, [LLMRequest(prompt="hello", params=GenerationParams(0.0, 1.0, 10, n=2))])[0]
    assert greedy.choices[0] == greedy.choices[1]


def test_stop_string_truncates_and_ends_generation(backend: TransformersBackend) -> None:
    full = run(backend, [LLMRequest(prompt="hello", params=GenerationParams(0.0, 1.0, 40))])[0]
    text = full.text
    start = next(
        i
        for i in range(4, len(text) - 3)
        if text[i : i + 2].isascii() and text[i : i + 2].strip() == text[i : i + 2]
    )
    stop = text[start : start + 2]
    cut = text.find(stop)
    stopped = run(backend, [LLMRequest(prompt="hello", params=GenerationParams(0.0, 1.0, 40, stop=(stop,)))])[
        0
    ]
    assert stopped.text == text[:cut]
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.completion_tokens < full.completion_tokens


def test_max_tokens_gives_length_finish(backend: TransformersBackend) -> None:
    results = run(
        backend,
        [
            LLMRequest(prompt="hello", params=GenerationParams(0.0, 1.0, 5)),
            LLMRequest(prompt="hello", params=GenerationParams(0.0, 1.0, 9)),
        ],
    )
    assert [r.completion_tokens for r in results] == [5, 9]
    assert [r.choices[0].finish_reason for r in results] == ["length", "length"]


def test_overlong_request_fails_alone(backend: TransformersBackend) -> None:
    requests = [
        LLMRequest(prompt="hello", params=GREEDY),
        LLMRequest(prompt="word " * 300, params=GREEDY),
        LLMRequest(prompt="hello", params=GenerationParams(0.0, 1.0, 255)),  # prompt + max_tokens > 256
        LLMRequest(prompt="x y z", params=GREEDY),
    ]
    seen: list[LLMResult] = []
    results = run(backend, requests, on_result=seen.append)
    assert [r.ok for r in results] == [True, False, False, True]
    assert results[1].error is not None and results[1].error.kind == "context_length"
    assert results[2].error is not None and results[2].error.kind == "context_length"
    assert sorted(id(r) for r in seen) == sorted(id(r) for r in results)


def test_invalid_params_are_that_requests_error(backend: TransformersBackend) -> None:
    results = run(
        backend,
        [
            LLMRequest(prompt="hi", params=GenerationParams(temperature=-1.0)),
            LLMRequest(prompt="hi", params=GREEDY),
        ],
    )
    assert results[0].error is not None and results[0].error.kind == "invalid_request"
    assert results[1].ok


def test_a_crashing_batch_is_retried_row_by_row(
    backend: TransformersBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad_id = backend._tokenizer("Q")["input_ids"][-1]
    real_forward = backend._model.forward

    def flaky_forward(*args: Any, **kwargs: Any) -> Any:
        ids = kwargs["input_ids"]
        if ids.shape[1] > 1 and (ids == bad_id).any():  # the prompt pass, not a generated "Q"
            raise RuntimeError("simulated kernel failure")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(backend._model, "forward", flaky_forward)
    results = run(backend, [LLMRequest(prompt=p, params=GREEDY) for p in ["hello", "Q", "x y z"]])
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error is not None and results[1].error.kind == "internal"
    assert "simulated kernel failure" in results[1].error.message


def test_stream_concatenation_equals_generate(backend: TransformersBackend) -> None:
    chat = LLMRequest(messages=(Message("user", "What is the capital of France?"),), params=GREEDY)
    expected = run(backend, [chat])[0].text

    async def collect(request: LLMRequest) -> list[str]:
        return [piece async for piece in backend.stream(request)]

    pieces = asyncio.run(collect(chat))
    assert "".join(pieces) == expected
    assert len(pieces) >= 1
    # With a stop string the stream stops where generate() truncates.
    stop = expected[5:7]
    with_stop = LLMRequest(messages=chat.messages, params=GenerationParams(0.0, 1.0, 24, stop=(stop,)))
    assert "".join(asyncio.run(collect(with_stop))) == run(backend, [with_stop])[0].text


def test_stream_of_a_bad_request_raises_llm_call_error(backend: TransformersBackend) -> None:
    async def collect() -> list[str]:
        return [p async for p in backend.stream(LLMRequest(prompt="word " * 300, params=GREEDY))]

    with pytest.raises(LLMCallError) as info:
        asyncio.run(collect())
    assert info.value.error.kind == "context_length"


def test_event_loop_stays_responsive_while_generating(backend: TransformersBackend) -> None:
    async def main() -> tuple[int, list[LLMResult]]:
        ticks = 0
        done = False

        async def ticker() -> None:
            nonlocal ticks
            while not done:
                ticks += 1
                await asyncio.sleep(0.005)

        task = asyncio.create_task(ticker())
        results = await backend.generate(
            [LLMRequest(prompt=p, params=GenerationParams(0.0, 1.0, 60)) for p in PROMPTS * 2]
        )
        done = True
        await task
        return ticks, results

    ticks, results = asyncio.run(main())
    assert all(r.ok for r in results)
    assert ticks > 3


def test_model_chat_template_is_used(tmp_path: Path) -> None:
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant] "
    b = TransformersBackend(tiny_llama_dir(tmp_path / "m", chat_template=template), dtype="float32")
    try:
        chat = LLMRequest(messages=(Message("user", "hi"),), params=GREEDY)
        result = run(b, [chat])[0]
        assert result.ok
        assert result.prompt_tokens == len(
            b._tokenizer("[user] hi\n[assistant] ", add_special_tokens=False)["input_ids"]
        )
        assert b._prepare(chat).rows[0].stops == ()
    finally:
        asyncio.run(b.aclose())


def test_default_chat_template_and_stop_for_a_model_without_one(tmp_path: Path) -> None:
    b = TransformersBackend(tiny_llama_dir(tmp_path / "m", chat_template=None), dtype="float32")
    try:
        chat = LLMRequest(messages=(Message("system", "Be brief."), Message("user", "hi")), params=GREEDY)
        result = run(b, [chat])[0]
        assert result.ok
        rendered = "<s><|system|>\nBe brief.<|end|>\n<|user|>\nhi<|end|>\n<|assistant|>\n"
        tokenizer = tiny_tokenizer(chat_template=None)
        assert result.prompt_tokens == len(tokenizer(rendered, add_special_tokens=False)["input_ids"])
        assert b._tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE
        assert set(DEFAULT_STOP) <= set(b._prepare(chat).rows[0].stops)
        # Raw prompts are not chat: no template stop is added.
        assert b._prepare(LLMRequest(prompt="hi", params=GREEDY)).rows[0].stops == ()
    finally:
        asyncio.run(b.aclose())


def test_a_model_saved_with_the_default_template_gets_its_stop(backend: TransformersBackend) -> None:
    # tiny_llama_dir saves DEFAULT_CHAT_TEMPLATE, as a converted or trained model does.
    chat = LLMRequest(messages=(Message("user", "hi"),), params=GREEDY)
    stops = backend._prepare(chat).rows[0].stops
    assert set(DEFAULT_STOP) <= set(stops)
    # A base model writes the next role header instead of <|end|>: the answer ends there too.
    assert truncate_at_stop("Saltmere.\n<|user|>\nAnd?", stops) == ("Saltmere.\n", True)
    assert truncate_at_stop("<|assistant|>\n<|assistant|>\n", stops) == ("", True)
    assert truncate_at_stop("Saltmere, by the bay.", stops) == ("Saltmere, by the bay.", False)


def test_identity_is_stable_and_follows_the_files(tmp_path: Path) -> None:
    model = tiny_llama_dir(tmp_path / "m")
    first = model_dir_identity(model)
    assert model_dir_identity(model) == first
    config = json.loads((model / "config.json").read_text())
    config["rms_norm_eps"] = 1e-5
    (model / "config.json").write_text(json.dumps(config))
    assert model_dir_identity(model) != first


def test_dtype_choice_and_bad_dirs(tmp_path: Path) -> None:
    import torch

    assert pick_dtype("cpu", "float32") is torch.float32
    assert pick_dtype("cpu", "bf16") is torch.bfloat16
    assert pick_dtype("cpu", None) is torch.float32
    with pytest.raises(LabalignError, match="unknown dtype"):
        pick_dtype("cpu", "int3")
    with pytest.raises(LabalignError, match=r"config\.json"):
        TransformersBackend(tmp_path)
