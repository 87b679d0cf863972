"""OpenAIBackend against a local fault-injecting server: nothing lost, nothing duplicated, retries bounded."""

from __future__ import annotations

import asyncio
import random
import socket
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from labalign.errors import LabalignError
from labalign.llm.chat_template import DEFAULT_STOP
from labalign.llm.openai_backend import OpenAIBackend, normalize_base_url, render_default_chat
from labalign.llm.retry import backoff_delay, is_context_length_message, parse_retry_after, retry_wait
from labalign.llm.types import ErrorKind, GenerationParams, LLMCallError, LLMRequest, LLMResult, Message
from labalign.settings.llm import LLMSettings
from tests.conftest import repo_root
from tests.llm_fakes import FaultConfig, FaultServer, ServerThread, answer_text

FAST = LLMSettings(
    max_concurrency=8, request_timeout_s=5, max_attempts=4, backoff_base_s=0.01, backoff_max_s=0.05
)
_KIND: dict[str, ErrorKind] = {
    "500": "server",
    "429": "rate_limited",
    "slow": "timeout",
    "malformed": "bad_response",
}


def chat(text: str, **params: object) -> LLMRequest:
    return LLMRequest(messages=(Message("user", text),), params=GenerationParams(**params))  # type: ignore[arg-type]


def predict(server: FaultServer, rid: str, max_attempts: int) -> tuple[str, int]:
    """What the retry policy must do with this id: ('ok' | error kind, attempts)."""
    bad_bodies = 0
    attempt = 0
    while True:
        attempt += 1
        outcome = server.outcome(rid, attempt)
        if outcome == "ok":
            return "ok", attempt
        kind = _KIND[outcome]
        bad_bodies += kind == "bad_response"
        if attempt >= max_attempts or bad_bodies >= 3:
            return kind, attempt


# -- pure policy -------------------------------------------------------------------------------------


def test_base_url_validation_and_normalization() -> None:
    assert normalize_base_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000/v1"
    assert normalize_base_url(" https://host.example/v1/ ") == "https://host.example/v1"
    assert normalize_base_url("http://h:1/openai/v1") == "http://h:1/openai/v1"
    for bad in ("ftp://h/v1", "localhost:8000", "http://", "http://h:99999/v1", "http://h/v1?x=1", "/v1"):
        with pytest.raises(LabalignError) as info:
            normalize_base_url(bad)
        assert info.value.hint and "http://localhost:8000/v1" in info.value.hint


def test_api_key_required_for_remote_https_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(LabalignError, match="OPENAI_API_KEY"):
        OpenAIBackend("https://api.example.com/v1", model="m")
    with pytest.raises(LabalignError, match="MY_KEY"):
        OpenAIBackend("https://api.example.com/v1", model="m", settings=LLMSettings(api_key_env="MY_KEY"))
    OpenAIBackend("http://127.0.0.1:9/v1", model="m")  # a local server takes a placeholder key
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert (
        OpenAIBackend("https://api.example.com/v1", model="m").identity
        == "openai:https://api.example.com/v1:m"
    )


def test_retry_after_parsing() -> None:
    now = 1_700_000_000.0
    in_3s = format_datetime(datetime.fromtimestamp(now, UTC) + timedelta(seconds=3), usegmt=True)
    assert parse_retry_after({"Retry-After": "2"}) == 2.0
    assert parse_retry_after({"retry-after": "0.25"}) == 0.25
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert parse_retry_after({"Retry-After": in_3s}, now=now) == pytest.approx(3.0)
    assert parse_retry_after({"Retry-After": in_3s}, now=now + 10) == 0.0  # a date in the past
    for junk in ("soon", "-1", "nan", "Mon, 99 Foo 2024"):
        assert parse_retry_after({"Retry-After": junk}) is None
    assert parse_retry_after({}) is None


def test_backoff_is_full_jitter_capped() -> None:
    rng = random.Random(0)
    for retry in range(12):
        bound = min(30.0, 0.5 * 2**retry)
        delays = [backoff_delay(retry, base_s=0.5, max_s=30.0, rng=rng) for _ in range(200)]
        assert all(0 <= d <= bound for d in delays)
        assert max(delays) > 0.8 * bound  # full jitter reaches the bound...
        assert min(delays) < 0.2 * bound  # ...and comes close to zero
    assert retry_wait(3, retry_after=100.0, base_s=0.5, max_s=30.0, rng=rng) == 30.0
    assert retry_wait(3, retry_after=0.2, base_s=0.5, max_s=30.0, rng=rng) == 0.2


def test_context_length_messages_of_known_servers() -> None:
    assert is_context_length_message("This model's maximum context length is 4096 tokens. However, ...")
    assert is_context_length_message("the request exceeds the available context size, try increasing it")
    assert is_context_length_message(
        "Input validation error: `inputs` tokens + `max_new_tokens` too many tokens"
    )
    assert not is_context_length_message("temperature must be between 0 and 2")


def test_default_template_rendering() -> None:
    text = render_default_chat((Message("system", "Be brief."), Message("user", "Hi")))
    assert text == "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n"


# -- against the fault server ------------------------------------------------------------------------


def test_faults_every_request_accounted_for_exactly() -> None:
    """500s, 429s, timeouts and malformed bodies: each request ends exactly as the policy predicts."""
    config = FaultConfig(
        seed=7,  # chosen so that every kind of final failure occurs
        error_500_rate=0.2,
        error_429_rate=0.15,
        slow_rate=0.05,
        malformed_rate=0.15,
        retry_after="0.01",
        slow_s=3.0,
    )
    server = FaultServer(config)
    # A wide gap between a normal answer and a slow one: at 0.4 s a normal answer on a freshly
    # installed, loaded 2-core machine once took longer and was retried (counted 2 attempts, not 1).
    settings = FAST.model_copy(update={"request_timeout_s": 1.5})
    requests = [chat(f"question {i}", max_tokens=32, seed=i) for i in range(80)]
    seen: list[LLMResult] = []
    with ServerThread(server.app) as url:
        backend = OpenAIBackend(url, model="fake-model", settings=settings)

        async def run() -> list[LLMResult]:
            try:
                return await backend.generate(requests, on_result=seen.append)
            finally:
                await backend.aclose()

        results = asyncio.run(run())
    counts, _ = server.snapshot()

    assert [r.request for r in results] == requests  # request order, one each
    assert sorted(id(r) for r in seen) == sorted(id(r) for r in results)  # on_result once per request
    outcomes: Counter[str] = Counter()
    for request, result in zip(requests, results, strict=True):
        rid = request.messages[-1].content  # type: ignore[index]
        expected_kind, expected_attempts = predict(server, rid, settings.max_attempts)
        outcomes[expected_kind] += 1
        assert counts[rid] == expected_attempts, rid  # not one request more, not one less
        if expected_kind == "ok":
            assert result.ok and result.error is None
            assert result.text == answer_text(server.bodies[rid], 0)
            assert result.prompt_tokens == 2 and result.completion_tokens == len(result.text.split())
        else:
            assert result.error is not None and not result.choices
            assert (result.error.kind, result.error.attempts) == (expected_kind, expected_attempts)
    assert sum(counts.values()) == sum(predict(server, f"question {i}", 4)[1] for i in range(80))
    # The seed must exercise the policy: recoveries, and every kind of final failure.
    assert outcomes["ok"] > 40
    assert {"server", "rate_limited", "timeout", "bad_response"} <= set(outcomes)
    assert any(counts[f"question {i}"] > 1 and results[i].ok for i in range(80))


def test_retry_after_is_honoured_and_capped() -> None:
    server = FaultServer(
        FaultConfig(retry_after="0.3", script={"wait": ["429", "429", "ok"], "capped": ["429", "ok"]})
    )
    with ServerThread(server.app) as url:
        # backoff_base_s=0: without Retry-After the client would come back at once.
        backend = OpenAIBackend(url, model="m", settings=LLMSettings(backoff_base_s=0.0, backoff_max_s=5))
        result = asyncio.run(backend.generate([chat("wait")]))[0]
        assert result.ok
        gaps = [b - a for a, b in zip(server.arrivals["wait"], server.arrivals["wait"][1:], strict=False)]
        assert len(gaps) == 2 and all(0.28 <= g < 1.0 for g in gaps), gaps

        server.config.retry_after = "30"
        capped = OpenAIBackend(url, model="m", settings=LLMSettings(backoff_base_s=0.0, backoff_max_s=0.2))
        started = time.monotonic()
        assert asyncio.run(capped.generate([chat("capped")]))[0].ok
        assert 0.18 <= time.monotonic() - started < 2.0  # backoff_max_s caps the server's 30 s


def test_client_errors_are_not_retried() -> None:
    server = FaultServer(FaultConfig(context_window=12, script={"bad param": ["400"]}))
    with ServerThread(server.app) as url:
        backend = OpenAIBackend(url, model="m", settings=FAST)
        too_long, bad, fine = asyncio.run(
            backend.generate(
                [
                    chat("a long question", max_tokens=20),
                    chat("bad param", max_tokens=2),
                    chat("ok", max_tokens=4),
                ]
            )
        )
    assert too_long.error is not None and too_long.error.kind == "context_length"
    assert "maximum context length" in too_long.error.message and too_long.error.attempts == 1
    assert bad.error is not None and bad.error.kind == "invalid_request" and bad.error.attempts == 1
    assert "'temperature' must be a number" in bad.error.message
    assert fine.ok
    counts, _ = server.snapshot()
    assert counts == Counter({"a long question": 1, "bad param": 1, "ok": 1})


def test_concurrency_bound_is_respected() -> None:
    server = FaultServer(FaultConfig(latency_s=0.05))
    settings = FAST.model_copy(update={"max_concurrency": 5})
    with ServerThread(server.app) as url:
        backend = OpenAIBackend(url, model="m", settings=settings)

        async def run() -> list[LLMResult]:
            # Two batches at once share the bound: it is per backend, not per call.
            a, b = await asyncio.gather(
                backend.generate([chat(f"a{i}") for i in range(20)]),
                backend.generate([chat(f"b{i}") for i in range(20)]),
            )
            return a + b

        results = asyncio.run(run())
    assert all(r.ok for r in results)
    assert server.max_in_flight == 5


def test_model_resolved_once_from_the_server_list() -> None:
    server = FaultServer(FaultConfig(models=("served-model", "other")))
    with ServerThread(server.app) as url:
        backend = OpenAIBackend(url)
        assert backend.identity == f"{'openai:' + url}/v1:served-model"  # synchronous path
        fresh = OpenAIBackend(url)
        results = asyncio.run(fresh.generate([chat(f"q{i}") for i in range(10)]))
        assert all(r.ok for r in results)
        assert fresh.identity == backend.identity
        third = OpenAIBackend(url)

        async def inside_a_loop() -> str:
            with pytest.raises(RuntimeError, match="identify"):  # no blocking network call on the loop
                _ = third.identity
            return await third.identify()

        assert asyncio.run(inside_a_loop()) == backend.identity
    assert server.model_lists == 3  # one per backend, not one per request
    assert {b["model"] for b in server.bodies.values()} == {"served-model"}


def test_unreachable_server_reports_connection_errors() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = LLMSettings(max_attempts=3, backoff_base_s=0.0)
    backend = OpenAIBackend(f"http://127.0.0.1:{port}/v1", model="m", settings=settings)
    results = asyncio.run(backend.generate([chat("a"), chat("b")]))
    assert [(r.error.kind, r.error.attempts) for r in results if r.error] == [("connection", 3)] * 2
    unnamed = OpenAIBackend(f"http://127.0.0.1:{port}/v1", settings=settings)
    failed = asyncio.run(unnamed.generate([chat("a")]))
    assert failed[0].error is not None and failed[0].error.kind == "connection"
    with pytest.raises(LabalignError, match="cannot list the models"):
        _ = unnamed.identity


def test_choices_endpoints_and_parameters() -> None:
    server = FaultServer()
    with ServerThread(server.app) as url:
        backend = OpenAIBackend(url, model="m", settings=FAST)
        params = GenerationParams(temperature=0.2, top_p=0.9, max_tokens=40, stop=("###",), seed=5, n=3)
        many, raw = asyncio.run(
            backend.generate(
                [LLMRequest(messages=(Message("user", "many"),), params=params), LLMRequest(prompt="raw")]
            )
        )
        templated = OpenAIBackend(
            url, model="m", settings=FAST.model_copy(update={"use_chat_endpoint": False})
        )
        via_template = asyncio.run(templated.generate([chat("templated", stop=("STOP",))]))[0]
    assert [c.text for c in many.choices] == [answer_text(server.bodies["many"], j) for j in range(3)]
    body = server.bodies["many"]
    assert (
        body["temperature"],
        body["top_p"],
        body["max_tokens"],
        body["stop"],
        body["seed"],
        body["n"],
    ) == (0.2, 0.9, 40, ["###"], 5, 3)
    assert "messages" in body and "prompt" in server.bodies["raw"] and "seed" not in server.bodies["raw"]
    assert raw.ok and raw.text == answer_text(server.bodies["raw"], 0)
    prompt = "<|user|>\ntemplated<|end|>\n<|assistant|>\n"
    assert via_template.ok and server.bodies[prompt]["stop"] == ["STOP", *DEFAULT_STOP]
    assert templated.identity.endswith(":m:default-template") and backend.identity.endswith(":m")


def test_streaming_chat_completions_and_retry_before_first_token() -> None:
    server = FaultServer(
        FaultConfig(script={"flaky": ["500", "ok"], "dies": ["midstream"]}, context_window=50)
    )
    with ServerThread(server.app) as url:
        backend = OpenAIBackend(url, model="m", settings=FAST)

        async def collect(request: LLMRequest) -> list[str]:
            return [piece async for piece in backend.stream(request)]

        pieces = asyncio.run(collect(chat("flaky", max_tokens=20)))
        assert "".join(pieces) == answer_text(server.bodies["flaky"], 0) and len(pieces) > 3
        assert server.counts["flaky"] == 2
        raw = asyncio.run(collect(LLMRequest(prompt="plain", params=GenerationParams(max_tokens=3))))
        assert "".join(raw) == "answer 0 to"

        with pytest.raises(LLMCallError) as died:
            asyncio.run(collect(chat("dies", max_tokens=20)))
        assert died.value.error.kind == "server" and "upstream died" in died.value.error.message
        assert server.counts["dies"] == 1  # text was already out: a retry would repeat it
        with pytest.raises(LLMCallError) as too_long:
            asyncio.run(collect(chat("long", max_tokens=100)))
        assert too_long.value.error.kind == "context_length" and server.counts["long"] == 1


def test_one_backend_across_event_loops() -> None:
    """Scripts call asyncio.run() per batch: the backend must not keep a dead loop's connections."""
    server = FaultServer()
    with ServerThread(server.app) as url:
        backend = OpenAIBackend(url, model="m", settings=FAST)
        for round_ in range(3):
            assert all(
                r.ok for r in asyncio.run(backend.generate([chat(f"r{round_}-{i}") for i in range(4)]))
            )


def test_client_benchmark_runs_and_reports_both_ratios() -> None:
    script = repo_root() / "benchmarks" / "llm_client.py"
    args = [
        "--requests",
        "40",
        "--slots",
        "8",
        "--ms-per-token",
        "1",
        "--tokens",
        "8",
        "--baseline-requests",
        "8",
    ]
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "OpenAIBackend / server maximum:" in done.stdout and "OpenAIBackend / thread pool:" in done.stdout
    assert "slots busy at once during the OpenAIBackend run: 8 of 8" in done.stdout


def test_abandoned_stream_frees_its_slot() -> None:
    server = FaultServer()
    with ServerThread(server.app) as url:
        backend = OpenAIBackend(url, model="m", settings=FAST.model_copy(update={"max_concurrency": 1}))

        async def first_piece_then_another_stream() -> tuple[str, str]:
            stream = backend.stream(chat("abandoned"))
            first = await anext(stream)
            await stream.aclose()  # type: ignore[attr-defined]
            # With one slot, this waits forever unless the abandoned stream gave its slot back.
            second = await asyncio.wait_for(anext(backend.stream(chat("next"))), timeout=5)
            await backend.aclose()
            return first, second

        first, second = asyncio.run(first_piece_then_another_stream())
    assert (first, second) == ("answer", "answer")
