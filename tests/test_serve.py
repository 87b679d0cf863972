"""`create_app` over a scripted backend, driven by the real openai clients over real HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labalign.llm.types import GenerationParams, LLMRequest, Message
from labalign.serve import create_app
from tests.llm_fakes import ScriptedBackend, ServerThread

KEY = "sekrit-key"


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, ScriptedBackend]]:
    backend = ScriptedBackend()
    app = create_app(backend, model_name="tiny", api_key=KEY, max_body_bytes=64 * 1024, max_tokens_limit=256)
    with ServerThread(app) as url:
        yield url, backend


@pytest.fixture
def client(served: tuple[str, ScriptedBackend]) -> Iterator[openai.OpenAI]:
    # max_retries=0: a 429 or 5xx from our server must reach the test, not be retried away.
    with openai.OpenAI(base_url=served[0] + "/v1", api_key=KEY, max_retries=0) as c:
        yield c


def expected(text: str, *, choice: int = 0, max_tokens: int = 512, stop: tuple[str, ...] = ()) -> str:
    request = LLMRequest(
        messages=(Message("user", text),), params=GenerationParams(max_tokens=max_tokens, stop=stop)
    )
    return ScriptedBackend.answer(request, choice)[0]


def test_models_lists_the_served_name(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]


def test_chat_plain_with_parameters(client: openai.OpenAI, served: tuple[str, ScriptedBackend]) -> None:
    response = client.chat.completions.create(
        model="tiny",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello there model"},
        ],
        n=3,
        temperature=0.3,
        top_p=0.8,
        seed=11,
        max_tokens=40,
        stop=["zzz"],
    )
    assert [c.message.content for c in response.choices] == [
        expected("hello there model", choice=j) for j in range(3)
    ]
    assert [c.index for c in response.choices] == [0, 1, 2]
    assert {c.finish_reason for c in response.choices} == {"stop"}
    assert response.usage is not None and response.usage.prompt_tokens == 3
    words = sum(len((c.message.content or "").split()) for c in response.choices)
    assert response.usage.completion_tokens == words
    seen = served[1].seen[-1]
    assert seen.messages == (Message("system", "be brief"), Message("user", "hello there model"))
    assert seen.params == GenerationParams(
        temperature=0.3, top_p=0.8, max_tokens=40, stop=("zzz",), seed=11, n=3
    )


def test_chat_length_and_stop(client: openai.OpenAI) -> None:
    cut = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "a b c d e"}], max_tokens=3
    )
    assert cut.choices[0].message.content == "[0] echo: a" and cut.choices[0].finish_reason == "length"
    stopped = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "a b c"}], stop="b"
    )
    assert stopped.choices[0].message.content == "[0] echo: a "


def test_chat_streaming_async(served: tuple[str, ScriptedBackend]) -> None:
    async def go() -> tuple[list[Any], str]:
        async with openai.AsyncOpenAI(base_url=served[0] + "/v1", api_key=KEY, max_retries=0) as aclient:
            stream = await aclient.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "stream me please"}], stream=True
            )
            chunks = [chunk async for chunk in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return chunks, text

    chunks, text = asyncio.run(go())
    assert text == expected("stream me please")
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len(chunks) >= 5 and chunks[-1].choices[0].finish_reason == "stop"
    assert len({c.id for c in chunks}) == 1 and chunks[0].object == "chat.completion.chunk"


def test_completions_plain_and_streaming(client: openai.OpenAI) -> None:
    batch = client.completions.create(model="tiny", prompt=["first", "second one"], n=2, max_tokens=10)
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]
    texts = [c.text for c in batch.choices]
    assert texts == ["[0] echo: first", "[1] echo: first", "[0] echo: second one", "[1] echo: second one"]
    assert batch.usage is not None and batch.usage.prompt_tokens == 3
    pieces = list(client.completions.create(model="tiny", prompt="go on", stream=True))
    assert "".join(p.choices[0].text for p in pieces) == "[0] echo: go on"
    assert pieces[-1].choices[0].finish_reason == "stop"


def test_streaming_several_choices_with_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "two ways"}],
            n=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    by_index: dict[int, str] = {}
    for chunk in chunks:
        for c in chunk.choices:
            by_index[c.index] = by_index.get(c.index, "") + (c.delta.content or "")
    assert by_index == {0: expected("two ways"), 1: expected("two ways", choice=1)}
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 2


def test_api_key_is_enforced(served: tuple[str, ScriptedBackend]) -> None:
    url = served[0]
    for key in ("wrong", KEY + "x", ""):
        with (
            openai.OpenAI(base_url=url + "/v1", api_key=key or "none", max_retries=0) as bad,
            pytest.raises(openai.AuthenticationError),
        ):
            bad.models.list()
    for headers in ({}, {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}):
        response = httpx.post(f"{url}/v1/chat/completions", headers=headers, json={})
        assert response.status_code == 401
        error = response.json()["error"]
        assert error["code"] == "invalid_api_key" and error["type"] and error["message"]
    assert httpx.get(f"{url}/health").status_code == 200
    ok = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200


def test_no_key_configured_means_open() -> None:
    with ServerThread(create_app(ScriptedBackend(), model_name="m", api_key=None)) as url:
        assert httpx.get(f"{url}/v1/models").status_code == 200


AUTH = {"Authorization": f"Bearer {KEY}"}
GOOD = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"", 400, "empty"),
        (b"[1, 2]", 400, ""),
        (json.dumps({**GOOD, "messages": []}).encode(), 400, "messages"),
        (json.dumps({**GOOD, "messages": "hi"}).encode(), 400, "messages"),
        (json.dumps({**GOOD, "messages": [{"role": "wizard", "content": "x"}]}).encode(), 400, "role"),
        (json.dumps({**GOOD, "temperature": "hot"}).encode(), 400, "temperature"),
        (json.dumps({**GOOD, "temperature": 7}).encode(), 400, "temperature"),
        (json.dumps({**GOOD, "n": 0}).encode(), 400, "n"),
        (json.dumps({**GOOD, "max_tokens": 100000}).encode(), 400, "limit of 256"),
        (json.dumps({**GOOD, "stop": ["a", ""]}).encode(), 400, "stop"),
        (json.dumps({**GOOD, "model": "gpt-9"}).encode(), 404, "gpt-9"),
        (json.dumps({"messages": GOOD["messages"]}).encode(), 400, "model"),
    ],
)
def test_bad_chat_requests_are_4xx_json(
    served: tuple[str, ScriptedBackend], body: bytes, status: int, fragment: str
) -> None:
    response = httpx.post(f"{served[0]}/v1/chat/completions", headers=AUTH, content=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert fragment in error["message"] and error["type"] == "invalid_request_error"


def test_bad_completion_requests_and_routes(served: tuple[str, ScriptedBackend]) -> None:
    url = served[0]
    for body in ({"model": "tiny", "prompt": []}, {"model": "tiny", "prompt": [1, 2, 3]}, {"model": "tiny"}):
        response = httpx.post(f"{url}/v1/completions", headers=AUTH, json=body)
        assert response.status_code == 400 and "error" in response.json()
    assert httpx.get(f"{url}/v1/chat/completions", headers=AUTH).status_code == 405
    missing = httpx.get(f"{url}/v1/nothing", headers=AUTH)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_oversized_bodies_are_413(served: tuple[str, ScriptedBackend]) -> None:
    url = served[0]
    huge = json.dumps({**GOOD, "messages": [{"role": "user", "content": "x" * 100_000}]}).encode()
    response = httpx.post(f"{url}/v1/chat/completions", headers=AUTH, content=huge)
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server must count as it reads
        for _ in range(100):
            yield b" " * 1024

    chunked = httpx.post(f"{url}/v1/chat/completions", headers=AUTH, content=chunks())
    assert chunked.status_code == 413


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        ("rate_limited", 429, "rate_limit_exceeded"),
        ("timeout", 504, "timeout"),
        ("context_length", 400, "context_length_exceeded"),
        ("invalid_request", 400, "invalid_request"),
        ("server", 502, "upstream_error"),
        ("bad_response", 502, "bad_upstream_response"),
        ("internal", 500, "internal_error"),
    ],
)
def test_backend_errors_map_to_statuses(client: openai.OpenAI, kind: str, status: int, code: str) -> None:
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError) as info:
            response = client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": f"fail:{kind}"}], stream=stream
            )
            if stream:
                list(response)
        assert info.value.status_code == status
        assert isinstance(info.value.body, dict) and info.value.body.get("code") == code


def test_failure_mid_stream_is_reported_in_band(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "midfail now"}], stream=True
    )
    received: list[str] = []
    with pytest.raises(openai.APIError, match="mid-stream"):
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "[0]"


def test_concurrent_requests_share_batches() -> None:
    backend = ScriptedBackend()
    app = create_app(backend, model_name="m", api_key=None, batch_window_s=0.05)
    with ServerThread(app) as url:

        async def go() -> list[str]:
            async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as aclient:
                responses = await asyncio.gather(
                    *(
                        aclient.chat.completions.create(
                            model="m", messages=[{"role": "user", "content": f"q{i}"}]
                        )
                        for i in range(8)
                    )
                )
            return [r.choices[0].message.content or "" for r in responses]

        texts = asyncio.run(go())
    assert texts == [expected(f"q{i}") for i in range(8)]
    assert max(backend.batch_sizes) > 1 and sum(backend.batch_sizes) == 8


_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_FIELDS = st.sampled_from(
    ["model", "messages", "prompt", "n", "stop", "seed", "temperature", "top_p", "max_tokens", "stream"]
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    route=st.sampled_from(["/v1/chat/completions", "/v1/completions"]),
    body=st.dictionaries(_FIELDS, _VALUES, max_size=6),
    model_ok=st.booleans(),
    raw=st.none() | st.binary(max_size=40),
)
def test_any_body_gets_an_answer_or_a_4xx(
    route: str, body: dict[str, Any], model_ok: bool, raw: bytes | None
) -> None:
    if model_ok:
        body["model"] = "tiny"
    content = raw if raw is not None else json.dumps(body).encode()
    response = _fuzz_client.post(route, content=content, headers=AUTH)
    assert response.status_code in (200, 400, 404), response.text
    payload = response.text
    if response.status_code != 200:
        assert set(json.loads(payload)["error"]) >= {"message", "type", "code"}


# One in-process client for the fuzz test: one event loop for all examples, fast.
_fuzz_client = TestClient(
    create_app(ScriptedBackend(), model_name="tiny", api_key=KEY, batch_window_s=0),
    raise_server_exceptions=True,
)
