"""How close does OpenAIBackend get to an inference server's capacity, against a thread pool of sync clients?

A simulated server (separate process, 127.0.0.1 only) has K parallel slots; each answer takes
tokens x ms-per-token in a slot, and requests beyond K queue, like a GPU server at its batch limit.
Its best possible throughput is K / (tokens x ms-per-token) requests per second. We measure:

- OpenAIBackend.generate() over N requests (async, bounded concurrency, the SDG teacher client);
- a ThreadPoolExecutor(max_workers=os.cpu_count()) of openai.OpenAI().chat.completions.create calls,
  which is how instructlab-sdg calls its teacher.

    python benchmarks/llm_client.py --requests 400 --slots 16 --ms-per-token 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import openai
from rich.console import Console
from rich.table import Table

from labalign.llm.openai_backend import OpenAIBackend
from labalign.llm.settings import LLMSettings
from labalign.llm.types import GenerationParams, LLMRequest, Message

MODEL = "sim"


# -- the simulated server (runs in its own process so it does not share the client's GIL) -----------


def serve(slots: int, ms_per_token: float, tokens: int) -> None:
    """Run the simulated server; prints `PORT <n>` once it listens."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    gate = asyncio.Semaphore(slots)
    stats = {"requests": 0, "busy": 0, "max_busy": 0}
    answer = " ".join(["tok"] * tokens)

    async def chat(request: Request) -> Response:
        body = json.loads(await request.body())
        stats["requests"] += 1
        async with gate:  # beyond `slots`, requests wait here: the server's queue
            stats["busy"] += 1
            stats["max_busy"] = max(stats["max_busy"], stats["busy"])
            await asyncio.sleep(tokens * ms_per_token / 1000)
            stats["busy"] -= 1
        return JSONResponse(
            {
                "id": "sim",
                "object": "chat.completion",
                "created": 0,
                "model": body.get("model", MODEL),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer},
                        "finish_reason": "length",
                    }
                ],
                "usage": {"prompt_tokens": 8, "completion_tokens": tokens, "total_tokens": 8 + tokens},
            }
        )

    async def models(_: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def get_stats(_: Request) -> Response:
        return JSONResponse(stats)

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/models", models),
            Route("/stats", get_stats),
        ]
    )
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # without it every response waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, backlog=4096)
    uvicorn.Server(config).run(sockets=[sock])


# -- the clients -------------------------------------------------------------------------------------


@dataclass
class Measured:
    name: str
    requests: int
    seconds: float
    failed: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def _requests(n: int, tokens: int) -> list[LLMRequest]:
    params = GenerationParams(max_tokens=tokens, temperature=0.0)
    return [LLMRequest(messages=(Message("user", f"question {i}"),), params=params) for i in range(n)]


def run_backend(url: str, n: int, tokens: int, concurrency: int) -> Measured:
    settings = LLMSettings(max_concurrency=concurrency, request_timeout_s=60)
    backend = OpenAIBackend(url + "/v1", model=MODEL, settings=settings)

    async def go() -> Measured:
        try:
            started = time.perf_counter()
            results = await backend.generate(_requests(n, tokens))
            seconds = time.perf_counter() - started
        finally:
            await backend.aclose()
        return Measured(
            f"OpenAIBackend ({concurrency} in flight)", n, seconds, sum(not r.ok for r in results)
        )

    return asyncio.run(go())


def run_thread_pool(url: str, n: int, tokens: int) -> Measured:
    workers = os.cpu_count() or 1
    client = openai.OpenAI(base_url=url + "/v1", api_key="EMPTY", timeout=60)

    def one(i: int) -> bool:
        response = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"question {i}"}],
            max_tokens=tokens,
            temperature=0,
        )
        return bool(response.choices)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        ok = list(pool.map(one, range(n)))
    seconds = time.perf_counter() - started
    client.close()
    return Measured(f"{workers} threads x openai.OpenAI", n, seconds, ok.count(False))


def _get(url: str) -> dict[str, Any]:
    import httpx

    data: dict[str, Any] = httpx.get(url, timeout=5).json()
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=400, help="requests sent by OpenAIBackend")
    parser.add_argument("--slots", type=int, default=16, help="parallel slots of the simulated server")
    parser.add_argument("--ms-per-token", type=float, default=2.0, help="decode time per token in a slot")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per answer")
    parser.add_argument(
        "--concurrency", type=int, default=LLMSettings().max_concurrency, help="OpenAIBackend bound"
    )
    parser.add_argument(
        "--baseline-requests",
        type=int,
        default=None,
        help="requests sent by the thread pool (default: what it can do in about 5 s)",
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.slots, args.ms_per_token, args.tokens)
        return 0

    per_request = args.tokens * args.ms_per_token / 1000
    ceiling = args.slots / per_request
    workers = os.cpu_count() or 1
    baseline_n = args.baseline_requests or max(workers * 4, int(5 * min(workers, args.slots) / per_request))
    # Bounded run time: refuse settings that would take more than ~40 s at the ideal rate.
    expected = args.requests / ceiling + baseline_n * per_request / min(workers, args.slots)
    if expected > 40:
        parser.error(f"these settings would run for about {expected:.0f} s; use fewer --requests")

    server = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve",
            "--slots",
            str(args.slots),
            "--ms-per-token",
            str(args.ms_per_token),
            "--tokens",
            str(args.tokens),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"simulated server did not start: {line!r}")
        url = f"http://127.0.0.1:{int(line.split()[1])}"
        run_backend(url, min(32, args.requests), args.tokens, args.concurrency)  # warm-up: imports, sockets
        ours = run_backend(url, args.requests, args.tokens, args.concurrency)
        max_busy = _get(url + "/stats")["max_busy"]
        pool = run_thread_pool(url, baseline_n, args.tokens)
    finally:
        server.terminate()
        server.wait(timeout=10)
        if server.stdout is not None:
            server.stdout.close()

    console = Console()
    table = Table(
        title=f"simulated server: {args.slots} slots x {args.tokens} tokens x {args.ms_per_token:g} ms/token"
    )
    for column in ("client", "requests", "failed", "seconds", "req/s", "of max"):
        table.add_column(column, justify="left" if column == "client" else "right")
    table.add_row("server maximum", "", "", "", f"{ceiling:.1f}", "1.00")
    for m in (ours, pool):
        table.add_row(
            m.name,
            str(m.requests),
            str(m.failed),
            f"{m.seconds:.2f}",
            f"{m.rate:.1f}",
            f"{m.rate / ceiling:.2f}",
        )
    console.print(table)
    console.print(f"slots busy at once during the OpenAIBackend run: {max_busy} of {args.slots}")
    console.print(f"OpenAIBackend / server maximum: [bold]{ours.rate / ceiling:.2f}[/] (goal >= 0.90)")
    console.print(f"OpenAIBackend / thread pool:    [bold]{ours.rate / pool.rate:.1f}x[/]")
    return 0 if ours.failed == 0 and pool.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
