"""`labalign serve` and `labalign chat`: a model as an OpenAI-compatible server, or in the terminal."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import typer
from rich.markup import escape

from labalign.cli._common import console, err_console, settings
from labalign.errors import LabalignError
from labalign.llm.openai_backend import OpenAIBackend, is_loopback_host
from labalign.llm.types import Backend, GenerationParams, LLMCallError, LLMRequest, Message

if TYPE_CHECKING:
    from fastapi import FastAPI

_MODEL = typer.Argument(
    ..., help="'default' (embedded model), a .gguf file, a Hugging Face model folder, or an http(s) URL."
)


class Engine(StrEnum):
    labalign = "labalign"
    vllm = "vllm"


def _open_backend(ctx: typer.Context, spec: str) -> Backend:
    """The model behind `spec`, through labalign.llm.resolve (imported late: it pulls in model libraries)."""
    from labalign.llm.resolve import open_backend

    s = settings(ctx)
    return open_backend(spec, settings=s.llm, cache_dir=s.cache_dir)


def default_model_name(spec: str, backend: Backend) -> str:
    """What clients call the model: the upstream's name for a URL, else the file or folder name."""
    if isinstance(backend, OpenAIBackend):
        _ = backend.identity  # resolves the upstream model name when it was not configured
        return backend.model or "default"
    if "://" in spec:
        return urlsplit(spec).hostname or "default"
    name = Path(spec.rstrip("/\\")).name
    return name.removesuffix(".gguf") or "default"


def _listen(host: str, port: int) -> socket.socket:
    """Bind before starting the server, so a busy port is a one-line error and not a server log."""
    sock: socket.socket | None = None
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        # proto must say TCP: asyncio sets TCP_NODELAY on accepted connections only then, and
        # without it every response waits ~40 ms for a delayed ACK.
        sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        if sock is not None:
            sock.close()
        raise LabalignError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}", hint="pick another --port or --host"
        ) from exc
    sock.set_inheritable(True)
    return sock


GRACEFUL_SHUTDOWN_S = 5


def run_server(app: FastAPI, sock: socket.socket, log_level: str) -> None:
    """Serve until Ctrl-C or SIGTERM (a seam for tests, which do not want a blocking server).

    On the signal, queued requests are answered with 503 at once and running ones get most of the
    grace period to finish, so nothing is left for uvicorn to cancel (which logs tracebacks)."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if not self.should_exit:
                app.state.drain(GRACEFUL_SHUTDOWN_S - 1)
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    DrainingServer(config).run(sockets=[sock])


def _exec_vllm(
    model: str,
    host: str,
    port: int,
    api_key: str | None,
    model_name: str | None,
    extra: list[str] | None = None,
) -> None:
    """Replace this process with vLLM's OpenAI server; `extra` (what followed `--`) is passed unchanged."""
    if model == "default":
        raise LabalignError(
            "--engine vllm cannot serve 'default' (the embedded GGUF model runs on llama.cpp)",
            hint="give a Hugging Face model folder such as runs/x/train/final, or drop --engine vllm",
        )
    if importlib.util.find_spec("vllm") is None:
        raise LabalignError(
            "--engine vllm needs vLLM, which is not installed",
            hint="vLLM needs a CUDA machine: pip install vllm",
        )
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    argv += ["--model", model, "--host", host, "--port", str(port)]
    env = dict(os.environ)
    if api_key:
        # vLLM reads VLLM_API_KEY when --api-key is absent: a key in argv is visible to anyone's `ps`.
        env["VLLM_API_KEY"] = api_key
    if model_name:
        argv += ["--served-model-name", model_name]
    argv += extra or []
    err_console.print(f"starting vLLM: {escape(' '.join(argv))}")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)


def serve(
    ctx: typer.Context,
    model: str = _MODEL,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (loopback by default)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="Port to listen on."),
    api_key: str = typer.Option(
        None,
        "--api-key",
        envvar="LABALIGN_SERVE_API_KEY",
        help="Require 'Authorization: Bearer KEY' (or set LABALIGN_SERVE_API_KEY).",
    ),
    model_name: str = typer.Option(
        None, "--model-name", help="Model name clients must send (default: the model's file or folder name)."
    ),
    engine: Engine = typer.Option(
        Engine.labalign, "--engine", help="labalign (any model, CPU or GPU) or vllm (CUDA, fastest)."
    ),
    max_wait: float = typer.Option(
        30.0,
        "--max-wait",
        min=1.0,
        help="Refuse (503, Retry-After) a request the server expects not to finish within this many "
        "seconds, given the work already taken on.",
    ),
    max_queue: int = typer.Option(
        64, "--max-queue", min=1, help="Most answers (prompts x n) in progress or waiting at once."
    ),
    max_request_tokens: int = typer.Option(
        16384,
        "--max-request-tokens",
        min=1,
        help="Most tokens one request may ask for: prompts x n x max_tokens (400 above).",
    ),
) -> None:
    """Serve a model through an OpenAI-compatible API: /v1/models, /v1/chat/completions, /v1/completions.

    Any OpenAI client can then use it as base_url http://HOST:PORT/v1. A .gguf file runs on llama.cpp
    (all layers on the GPU when llama.cpp was built with GPU support; setting llm.gpu_layers). With
    --engine vllm, arguments after -- go to vLLM's server unchanged.

    Example: labalign serve runs/demo/train/final --port 8000 --model-name demo

    Example (vLLM on two GPUs): labalign serve runs/demo/train/final --engine vllm --
    --tensor-parallel-size 2 --gpu-memory-utilization 0.85
    """
    extra = list(ctx.args) if ctx is not None else []
    if extra and engine is not Engine.vllm:
        raise LabalignError(
            f"unexpected arguments {' '.join(extra)!r}: only --engine vllm takes arguments after --",
            hint="labalign serve MODEL [OPTIONS], or --engine vllm -- VLLM_ARGS",
        )
    if not is_loopback_host(host) and not api_key:
        err_console.print(
            f"[yellow]warning:[/] listening on {escape(host)} without --api-key: "
            "anyone who can reach this address can use the model",
            soft_wrap=True,
        )
    if engine is Engine.vllm:
        _exec_vllm(model, host, port, api_key, model_name, extra)
        return
    from labalign.serve import create_app

    s = settings(ctx)
    sock = _listen(host, port)
    try:
        backend = _open_backend(ctx, model)
        name = model_name or default_model_name(model, backend)
        app = create_app(
            backend,
            model_name=name,
            api_key=api_key,
            close_backend=True,
            max_wait_s=max_wait,
            max_queue=max_queue,
            max_request_tokens=max_request_tokens,
        )
        shown = f"[{host}]" if ":" in host else host
        err_console.print(
            f"serving [bold]{escape(name)}[/] at http://{escape(shown)}:{port}/v1  (Ctrl-C stops)",
            soft_wrap=True,
        )
        run_server(app, sock, s.log_level)
    finally:
        sock.close()


async def _answer(backend: Backend, request: LLMRequest, write: Callable[[str], None]) -> str:
    """Stream one answer through `write`; the whole text is returned for the history."""
    pieces: list[str] = []
    stream = backend.stream(request)
    try:
        async for piece in stream:
            pieces.append(piece)
            write(piece)
    finally:
        close = getattr(stream, "aclose", None)
        if close is not None:
            await close()
    return "".join(pieces)


def _write_stdout(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


def _write_console(piece: str) -> None:
    console.print(piece, end="", markup=False, highlight=False, soft_wrap=True)


def chat(
    ctx: typer.Context,
    model: str = _MODEL,
    question: str = typer.Option(None, "-q", "--question", help="Answer this once, print it, exit."),
    system: str = typer.Option(None, "--system", help="System prompt."),
    max_tokens: int = typer.Option(512, "--max-tokens", min=1, help="Longest answer, in tokens."),
    temperature: float = typer.Option(0.7, "--temperature", min=0.0, max=2.0, help="Sampling temperature."),
) -> None:
    """Chat with a model in the terminal; answers stream as they are written.

    Type /reset to clear the conversation, /exit (or Ctrl-D) to leave. With -q, answer one question
    on stdout and exit (for scripts).

    Example: labalign chat runs/demo/phase2/best --system "You are terse." -q "What is LAB?"
    """
    params = GenerationParams(temperature=temperature, max_tokens=max_tokens)
    preamble = (Message("system", system),) if system else ()
    backend = _open_backend(ctx, model)
    with asyncio.Runner() as runner:  # one loop for the whole session: the backend's connections live on it
        try:
            if question is not None:
                request = LLMRequest(messages=(*preamble, Message("user", question)), params=params)
                try:
                    runner.run(_answer(backend, request, _write_stdout))
                except LLMCallError as exc:
                    raise LabalignError(f"the model could not answer: {exc}") from exc
                _write_stdout("\n")
                return
            _interactive(runner, backend, model, preamble, params)
        finally:
            runner.run(backend.aclose())


def _interactive(
    runner: asyncio.Runner,
    backend: Backend,
    model: str,
    preamble: tuple[Message, ...],
    params: GenerationParams,
) -> None:
    console.print(
        f"[bold]labalign chat[/] with {escape(model)}: /reset clears the conversation, /exit leaves.",
        soft_wrap=True,
    )
    history: list[Message] = []
    while True:
        try:
            line = console.input("[bold green]you>[/] ")
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        command = line.strip()
        if not command:
            continue
        if command in ("/exit", "/quit"):
            return
        if command == "/reset":
            history.clear()
            console.print("[dim]conversation cleared[/]")
            continue
        if command.startswith("/"):
            console.print(f"unknown command {escape(command)}: /reset or /exit")
            continue
        request = LLMRequest(messages=(*preamble, *history, Message("user", line)), params=params)
        console.print("[bold blue]model>[/] ", end="")
        try:
            answer = runner.run(_answer(backend, request, _write_console))
        except KeyboardInterrupt:
            console.print()
            return
        except LLMCallError as exc:
            console.print()
            hint = " (the conversation is too long: /reset)" if exc.error.kind == "context_length" else ""
            console.print(f"[bold red]error:[/] {escape(str(exc))}{hint}", soft_wrap=True)
            continue
        console.print()
        history += [Message("user", line), Message("assistant", answer)]


def register(app: typer.Typer) -> None:
    """Add `serve` and `chat` as top-level commands of the labalign CLI."""
    # Extra arguments (after --) are collected for vLLM; serve itself refuses them otherwise.
    app.command("serve", context_settings={"allow_extra_args": True})(serve)
    app.command("chat")(chat)
