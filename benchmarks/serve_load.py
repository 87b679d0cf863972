"""`labalign serve` under load: bounded admission (the defaults) against the same server unbounded.

Starts `labalign serve MODEL` on a loopback port twice, once as shipped and once with admission
effectively off (`--max-wait 1e6 --max-queue 1000000`, how the server behaved before it had bounds),
and sends each `--levels` bursts of concurrent /v1/completions requests (multiples of the batch size,
32: 1x, 4x, 16x by default), each with `--max-tokens` and a client timeout of `--timeout` seconds.
Prints per server and level: requests answered (200), refused (429/503, at once), failed (timeouts and
other errors), the p50/p95 latency of the answered ones and of every outcome, and the share of
requests that got an answer or a refusal within the timeout, bounded against unbounded.

Loopback only, bounded in count (at most 16 x 32 requests per level) and time (each request at most
`--timeout` seconds; each server is stopped with SIGTERM after its levels).

    python benchmarks/serve_load.py [--model default] [--levels 1,4,16] [--max-tokens 128] [--timeout 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

BATCH = 32  # serve.batcher.Batcher's max_batch
PROMPT = "Write one sentence about the sea, number {i}:"


@dataclass
class Level:
    concurrent: int
    answered: list[float] = field(default_factory=list)
    refused: list[float] = field(default_factory=list)
    failed: list[float] = field(default_factory=list)

    def row(self) -> dict[str, object]:
        every = self.answered + self.refused + self.failed
        return {
            "concurrent": self.concurrent,
            "answered": len(self.answered),
            "refused": len(self.refused),
            "failed": len(self.failed),
            "answered_p50_s": _pct(self.answered, 50),
            "answered_p95_s": _pct(self.answered, 95),
            "all_p50_s": _pct(every, 50),
            "all_p95_s": _pct(every, 95),
            "in_time_share": (len(self.answered) + len(self.refused)) / max(1, len(every)),
        }


def _pct(values: list[float], q: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _burst(url: str, model: str, n: int, max_tokens: int, timeout: float) -> Level:
    level = Level(n)
    limits = httpx.Limits(max_connections=n + 8, max_keepalive_connections=n + 8)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:

        async def one(i: int) -> None:
            body = {
                "model": model,
                "prompt": PROMPT.format(i=i),
                "max_tokens": max_tokens,
                "temperature": 0.8,
            }
            start = time.monotonic()
            try:
                response = await client.post(url + "/v1/completions", json=body)
                code = response.status_code
            except httpx.HTTPError:
                code = 0
            took = time.monotonic() - start
            (level.answered if code == 200 else level.refused if code in (429, 503) else level.failed).append(
                took
            )

        await asyncio.gather(*(one(i) for i in range(n)))
    return level


def _serve(model: str, port: int, extra: list[str]) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "labalign", "serve", model, "--port", str(port), "--model-name", "m", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], limit_s: float = 600) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.5)
    raise SystemExit("the server did not start")


def run_server_levels(
    model: str, extra: list[str], levels: list[int], max_tokens: int, timeout: float
) -> list[dict[str, object]]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve(model, port, extra)
    rows = []
    try:
        _wait_ready(url, proc)
        asyncio.run(_burst(url, "m", 1, 8, timeout))  # warm-up: the first answer also measures throughput
        for k in levels:
            level = asyncio.run(_burst(url, "m", k * BATCH, max_tokens, timeout))
            rows.append(level.row())
            time.sleep(2)  # the batch still running for clients that left ends before the next burst
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        tracebacks = err.decode(errors="replace").count("Traceback")
        rows.append({"exit_code": proc.returncode, "tracebacks_on_stop": tracebacks})
    return rows


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="default")
    parser.add_argument("--levels", default="1,4,16", help="multiples of the batch size (32)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    servers = {
        "bounded": [],
        "unbounded": ["--max-wait", "1000000", "--max-queue", "1000000", "--max-request-tokens", "100000000"],
    }
    results = {
        name: run_server_levels(args.model, extra, levels, args.max_tokens, args.timeout)
        for name, extra in servers.items()
    }
    print(f"\nlabalign serve {args.model}, max_tokens {args.max_tokens}, client timeout {args.timeout:.0f} s")
    head = f"{'server':<10} {'concurrent':>10} {'answered':>8} {'refused':>8} {'failed':>7} "
    head += f"{'ok p50 s':>8} {'ok p95 s':>8} {'all p50 s':>9} {'all p95 s':>9} {'in time':>7}"
    print(head)
    for name, rows in results.items():
        for r in rows[:-1]:
            print(
                f"{name:<10} {r['concurrent']:>10} {r['answered']:>8} {r['refused']:>8} {r['failed']:>7} "
                f"{_fmt(r['answered_p50_s']):>8} {_fmt(r['answered_p95_s']):>8} {_fmt(r['all_p50_s']):>9} "
                f"{_fmt(r['all_p95_s']):>9} {r['in_time_share']:>7.0%}"
            )
        stop = rows[-1]
        print(
            f"{name:<10} stopped with SIGTERM: exit {stop['exit_code']}, "
            f"{stop['tracebacks_on_stop']} tracebacks"
        )
    for b, u in zip(results["bounded"][:-1], results["unbounded"][:-1], strict=True):
        shares = float(b["in_time_share"]), float(u["in_time_share"])  # type: ignore[arg-type]
        ratio = f"{shares[0] / shares[1]:.1f}x" if shares[1] > 0 else "unbounded: none"
        print(
            f"{b['concurrent']} concurrent: answered or refused within {args.timeout:.0f} s: bounded "
            f"{shares[0]:.0%}, unbounded {shares[1]:.0%} ({ratio})"
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
