"""Integration: `labalign serve` over a tiny random transformers model, through the real openai client."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from labalign.llm.types import GenerationParams, LLMRequest, Message
from labalign.serve import create_app
from tests.llm_fakes import ServerThread

hf = pytest.importorskip("labalign.llm.hf", reason="labalign.llm.hf (TransformersBackend) is not available")
tiny_models = pytest.importorskip("tests.tiny_models")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path: Path = tiny_models.tiny_llama_dir(tmp_path_factory.mktemp("tiny") / "model")
    return path


@pytest.fixture(scope="module")
def served(model_dir: Path) -> Iterator[tuple[str, Any]]:
    backend = hf.TransformersBackend(model_dir, device="cpu", dtype="float32", batch_size=4)
    app = create_app(backend, model_name="tiny", api_key=None, batch_window_s=0.05, close_backend=True)
    with ServerThread(app) as url:
        yield url, backend


def test_chat_plain_and_streamed_agree_with_the_backend(served: tuple[str, Any]) -> None:
    url, backend = served
    question = "What is the capital of France?"
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": question}]
    with openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client:
        entry = client.models.list().data[0]
        assert entry.id == "tiny" and (entry.model_extra or {}).get("max_model_len") == 256
        plain = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0)
        streamed = client.chat.completions.create(
            model="tiny", messages=messages, max_tokens=8, temperature=0, stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    answer = plain.choices[0].message.content
    assert answer and text == answer  # greedy: the same tokens either way
    assert (
        plain.usage is not None and plain.usage.prompt_tokens > 5 and 0 < plain.usage.completion_tokens <= 8
    )
    assert plain.choices[0].finish_reason in ("length", "stop")

    direct = asyncio.run(
        backend.generate(
            [
                LLMRequest(
                    messages=(Message("user", question),),
                    params=GenerationParams(temperature=0, max_tokens=8),
                )
            ]
        )
    )[0]
    assert direct.text == answer


def test_completions_batched_concurrently_match_single_requests(served: tuple[str, Any]) -> None:
    url, _ = served
    prompts = ["The sea is", "Question: How many legs", "The teacher model", "Paris"]

    async def go() -> tuple[list[str], list[str]]:
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client:
            together = await asyncio.gather(
                *(
                    client.completions.create(model="tiny", prompt=p, max_tokens=6, temperature=0)
                    for p in prompts
                )
            )
            alone = [
                await client.completions.create(model="tiny", prompt=p, max_tokens=6, temperature=0)
                for p in prompts
            ]
        return [r.choices[0].text for r in together], [r.choices[0].text for r in alone]

    together, alone = asyncio.run(go())
    assert together == alone and all(together)


def test_too_long_prompt_is_a_400(served: tuple[str, Any]) -> None:
    url, _ = served
    with openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client:
        with pytest.raises(openai.BadRequestError) as info:
            client.completions.create(model="tiny", prompt="word " * 400, max_tokens=8)
        assert isinstance(info.value.body, dict) and info.value.body["code"] == "context_length_exceeded"
        # Without max_tokens the server's default leaves room for the prompt in a 256-token window.
        ok = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}])
        assert ok.choices[0].finish_reason in ("length", "stop")
