"""How close does OpenAIBackend get to an inference server's capacity, against a thread pool of sync clients?

A simulated server (benchmarks/_slot_server.py: separate process, 127.0.0.1 only) has K parallel slots;
each answer takes tokens x ms-per-token in a slot, and requests beyond K queue, like a GPU server at its
batch limit.
Its best possible throughput is K / (tokens x ms-per-token) requests per second. We measure:

- OpenAIBackend.generate() over N requests (async, bounded concurrency, the SDG teacher client);
- a ThreadPoolExecutor(max_workers=os.cpu_count()) of openai.OpenAI().chat.completions.create calls,
  which is how instructlab-sdg calls its teacher.

    python benchmarks/llm_client.py --requests 400 --slots 16 --ms-per-token 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import openai
from _slot_server import MODEL, get_stats, start, stop
from rich.console import Console
from rich.table import Table

from labalign.llm.openai_backend import OpenAIBackend
from labalign.llm.types import GenerationParams, LLMRequest, Message
from labalign.settings.llm import LLMSettings

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
    args = parser.parse_args(argv)

    per_request = args.tokens * args.ms_per_token / 1000
    ceiling = args.slots / per_request
    workers = os.cpu_count() or 1
    baseline_n = args.baseline_requests or max(workers * 4, int(5 * min(workers, args.slots) / per_request))
    # Bounded run time: refuse settings that would take more than ~40 s at the ideal rate.
    expected = args.requests / ceiling + baseline_n * per_request / min(workers, args.slots)
    if expected > 40:
        parser.error(f"these settings would run for about {expected:.0f} s; use fewer --requests")

    server, url = start(args.slots, args.ms_per_token, teacher="fixed", tokens=args.tokens)
    try:
        run_backend(url, min(32, args.requests), args.tokens, args.concurrency)  # warm-up: imports, sockets
        ours = run_backend(url, args.requests, args.tokens, args.concurrency)
        max_busy = get_stats(url)["max_busy"]
        pool = run_thread_pool(url, baseline_n, args.tokens)
    finally:
        stop(server)

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
