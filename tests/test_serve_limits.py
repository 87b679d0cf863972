"""The server bounds its work: a per-request cap, refusal (503 + Retry-After) of work it cannot finish
in time, withdrawal of a disconnected client's queued work, and a quiet drain on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import httpx
import pytest

from labalign.llm.types import LLMRequest, LLMResult, ResultCallback
from labalign.serve import create_app
from labalign.serve.admission import Admission, Overloaded
from tests.conftest import repo_root
from tests.llm_fakes import ScriptedBackend, ServerThread


class SlowBackend(ScriptedBackend):
    """ScriptedBackend that takes `delay_s` per generate() call (cancellable, as an in-process model's
    waiting requests are) and records the prompts it started on."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s
        self.started: list[str] = []

    async def generate(
        self, requests: Sequence[LLMRequest], *, on_result: ResultCallback | None = None
    ) -> list[LLMResult]:
        self.started += [r.prompt or "" for r in requests]
        await asyncio.sleep(self.delay_s)
        return await super().generate(requests, on_result=on_result)


def body(prompt: str | list[str] = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": "m", "prompt": prompt, "max_tokens": 8, **extra}


async def _post_all(app: Any, bodies: list[dict[str, Any]], *, after: Any = None) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=30) as client:
        tasks = [asyncio.ensure_future(client.post("/v1/completions", json=b)) for b in bodies]
        if after is not None:
            await asyncio.sleep(0.1)
            after()
        return list(await asyncio.gather(*tasks))


def test_a_request_over_the_token_cap_is_a_400() -> None:
    app = create_app(ScriptedBackend(), model_name="m", api_key=None, max_request_tokens=1000)
    big = body(["a"] * 8, n=4, max_tokens=64)  # 8 x 4 x 64 = 2048 tokens
    (response,) = asyncio.run(_post_all(app, [big]))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "request_too_large" and "8 prompts x n=4 x max_tokens=64" in error["message"]


def test_work_beyond_the_queue_is_refused_at_once_with_retry_after() -> None:
    backend = SlowBackend(0.5)
    app = create_app(backend, model_name="m", api_key=None, max_queue=3)
    start = time.monotonic()
    responses = asyncio.run(_post_all(app, [body(f"q{i}") for i in range(8)]))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) == 3 and codes.count(503) == 5, codes
    refused = [r for r in responses if r.status_code == 503]
    assert all(int(r.headers["Retry-After"]) >= 1 for r in refused)
    assert all(r.json()["error"]["code"] == "server_overloaded" for r in refused)
    assert len(backend.started) == 3 and time.monotonic() - start < 5


def test_admission_refuses_what_cannot_finish_within_the_wait_limit() -> None:
    admission = Admission(max_wait_s=30, max_queue=100)
    first = admission.admit(1, 1000)  # alone: always admitted
    admission.record(tokens=1000, seconds=10)  # 100 budget tokens per second
    admission.admit(1, 1500)  # 2500 tokens pending: 25 s
    with pytest.raises(Overloaded, match="about 31 s") as info:
        admission.admit(1, 600)  # 3100 tokens: 31 s
    assert info.value.retry_after_s == 1  # 100 tokens over: a second
    admission.release(first)
    admission.admit(1, 600)  # 2100 tokens now
    assert admission.pending == (2, 2100)


def test_a_disconnected_clients_queued_work_is_withdrawn() -> None:
    backend = SlowBackend(1.0)
    app = create_app(backend, model_name="m", api_key=None)
    with ServerThread(app) as url, httpx.Client(base_url=url) as client:

        def busy() -> None:
            assert client.post("/v1/completions", json=body("first"), timeout=10).status_code == 200

        thread = threading.Thread(target=busy)
        thread.start()
        time.sleep(0.2)  # "first" is running; the next one waits behind it
        with pytest.raises(httpx.TimeoutException):
            httpx.post(url + "/v1/completions", json=body("abandoned"), timeout=0.3)
        thread.join()
        time.sleep(0.3)
        assert client.post("/v1/completions", json=body("later"), timeout=10).status_code == 200
    assert "abandoned" not in backend.started and "later" in backend.started


def test_drain_answers_queued_and_running_requests_with_503() -> None:
    backend = SlowBackend(30.0)
    app = create_app(backend, model_name="m", api_key=None)
    start = time.monotonic()
    responses = asyncio.run(
        _post_all(app, [body(f"q{i}") for i in range(3)], after=lambda: app.state.drain(0.3))
    )
    assert [r.status_code for r in responses] == [503, 503, 503]
    assert time.monotonic() - start < 5  # not the backend's 30 s
    assert all("shutting down" in r.json()["error"]["message"] for r in responses)


SERVER = """
import asyncio, socket, sys
from labalign.cli.serve import run_server
from labalign.serve import create_app
from tests.test_serve_limits import SlowBackend
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
sock.bind(("127.0.0.1", 0)); sock.listen(64)
print(sock.getsockname()[1], flush=True)
run_server(create_app(SlowBackend(20.0), model_name="m", api_key=None), sock, "warning")
print("exited", flush=True)
"""


def test_sigterm_drains_quietly_and_exits() -> None:
    env = {**os.environ, "PYTHONPATH": f"{repo_root()}:{repo_root() / 'src'}"}
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    url = f"http://127.0.0.1:{port}/v1/completions"

    async def clients() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            for _ in range(100):  # wait until it listens
                try:
                    await client.get(f"http://127.0.0.1:{port}/health")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            tasks = [asyncio.ensure_future(client.post(url, json=body(f"q{i}"))) for i in range(4)]
            await asyncio.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            return [r.status_code for r in await asyncio.gather(*tasks)]

    start = time.monotonic()
    codes = asyncio.run(clients())
    _, err = proc.communicate(timeout=30)
    assert codes == [503, 503, 503, 503] and time.monotonic() - start < 15
    # uvicorn re-raises the signal once it has shut down, so the exit status is SIGTERM's.
    assert proc.returncode in (0, -signal.SIGTERM), (proc.returncode, err)
    assert "Traceback" not in err and "CancelledError" not in err, err
