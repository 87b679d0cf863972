"""`labalign serve`: what it binds, what it serves, its warnings, and the vLLM hand-off."""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import labalign.cli.serve as serve_cli
from labalign.llm.openai_backend import OpenAIBackend
from tests.llm_fakes import FaultServer, ScriptedBackend, ServerThread, cli_app, patch_resolver

runner = CliRunner()


@pytest.fixture
def backend(monkeypatch: pytest.MonkeyPatch) -> ScriptedBackend:
    return patch_resolver(monkeypatch)[0]


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Replaces the blocking server loop: records what would have been served."""
    seen: dict[str, Any] = {}

    def run_server(app: Any, sock: socket.socket, log_level: str) -> None:
        seen.update(app=app, address=sock.getsockname(), log_level=log_level)

    monkeypatch.setattr(serve_cli, "run_server", run_server)
    return seen


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_binds_loopback_and_serves_the_backend(
    backend: ScriptedBackend, captured: dict[str, Any]
) -> None:
    port = free_port()
    result = runner.invoke(
        cli_app(),
        ["serve", "some/model.gguf", "--port", str(port), "--api-key", "k1", "--model-name", "demo"],
    )
    assert result.exit_code == 0, result.output
    assert captured["address"] == ("127.0.0.1", port) and captured["log_level"] == "info"
    assert "warning" not in result.stderr and f"http://127.0.0.1:{port}/v1" in result.stderr
    with TestClient(captured["app"]) as client:
        assert client.get("/v1/models").status_code == 401
        listed = client.get("/v1/models", headers={"Authorization": "Bearer k1"}).json()
        assert [m["id"] for m in listed["data"]] == ["demo"]
    assert backend.closed  # the app owns the backend: closed at shutdown


def test_default_model_names() -> None:
    scripted = ScriptedBackend()
    assert serve_cli.default_model_name("/models/gemma-270m.gguf", scripted) == "gemma-270m"
    assert serve_cli.default_model_name("runs/demo/phase2/best/", scripted) == "best"
    assert serve_cli.default_model_name("default", scripted) == "default"
    with ServerThread(FaultServer().app) as url:
        assert serve_cli.default_model_name(url + "/v1", OpenAIBackend(url)) == "fake-model"


def test_public_host_without_key_warns(
    backend: ScriptedBackend, captured: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    listened: list[tuple[str, int]] = []

    def listen(host: str, port: int) -> socket.socket:
        listened.append((host, port))  # never bind a public address in a test
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        return sock

    monkeypatch.setattr(serve_cli, "_listen", listen)
    result = runner.invoke(cli_app(), ["serve", "m", "--host", "0.0.0.0"])
    assert result.exit_code == 0, result.output
    assert listened == [("0.0.0.0", 8000)]
    assert "warning" in result.stderr and "--api-key" in result.stderr
    quiet = runner.invoke(cli_app(), ["serve", "m", "--host", "0.0.0.0", "--api-key", "k"])
    assert "warning" not in quiet.stderr


def test_busy_port_is_a_one_line_error(backend: ScriptedBackend, captured: dict[str, Any]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(cli_app(), ["serve", "m", "--port", str(port)])
    assert result.exit_code == 1 and "cannot listen on 127.0.0.1" in result.stderr
    assert "app" not in captured


def test_vllm_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def no_vllm(name: str, *args: Any) -> Any:
        return None if name == "vllm" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", no_vllm)
    result = runner.invoke(cli_app(), ["serve", "org/model", "--engine", "vllm"])
    assert result.exit_code == 1
    assert (
        "CUDA" in result.stderr
        and "pip install vllm" in result.stderr
        and len(result.stderr.splitlines()) == 1
    )

    execs: list[list[str]] = []
    keys: list[str | None] = []

    class Execed(Exception):
        pass

    def execve(path: str, argv: list[str], env: dict[str, str]) -> None:
        execs.append(argv)
        keys.append(env.get("VLLM_API_KEY"))
        raise Execed

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else None)
    monkeypatch.setattr(os, "execve", execve)
    with pytest.raises(Execed):
        serve_cli.serve(
            None,  # type: ignore[arg-type]  # the vLLM path reads no settings
            model="/models/llama",
            host="127.0.0.1",
            port=9001,
            api_key="secret-key",
            model_name="llama",
            engine=serve_cli.Engine.vllm,
        )
    assert execs == [
        [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            "/models/llama",
            "--host",
            "127.0.0.1",
            "--port",
            "9001",
            "--served-model-name",
            "llama",
        ]
    ]
    # The key goes through the environment: in argv, `ps` would show it to every user of the machine.
    assert keys == ["secret-key"] and "secret-key" not in " ".join(execs[0])

    # Arguments after -- reach vLLM unchanged, after labalign's own.
    args = [
        "serve",
        "/models/llama",
        "--engine",
        "vllm",
        "--port",
        "9002",
        "--",
        "--tensor-parallel-size",
        "2",
    ]
    with pytest.raises(Execed):
        runner.invoke(cli_app(), [*args, "--max-model-len", "4096"], catch_exceptions=False)
    assert execs[-1][-4:] == ["--tensor-parallel-size", "2", "--max-model-len", "4096"]
    assert execs[-1][execs[-1].index("--port") + 1] == "9002"


def test_serve_refuses_what_it_cannot_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else None)
    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("vLLM must not start"))
    result = runner.invoke(cli_app(), ["serve", "default", "--engine", "vllm"])
    assert result.exit_code == 1 and "cannot serve 'default'" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    # Extra arguments are vLLM's: the labalign engine says so rather than ignoring them.
    result = runner.invoke(cli_app(), ["serve", "default", "--", "--tensor-parallel-size", "2"])
    assert result.exit_code == 1 and "only --engine vllm takes arguments after --" in result.stderr
