"""A counting pass-through in front of an OpenAI-compatible server: forwards /v1 requests as they are
and adds up the `usage` of every answer, so that the tokens a real server (llama.cpp) spent are
counted on the server side, the same way for every client. `GET /stats` returns the totals.

    python _usage_proxy.py --upstream http://127.0.0.1:8000   # prints `PORT <n>`; 127.0.0.1 only
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any


def serve(upstream: str, timeout_s: float) -> None:
    import httpx
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    stats = {"requests": 0, "failed": 0, "prompt_tokens": 0, "completion_tokens": 0}
    client = httpx.AsyncClient(base_url=upstream, timeout=timeout_s)

    async def forward(request: Request) -> Response:
        body = await request.body()
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "authorization")}
        reply = await client.request(request.method, request.url.path, content=body, headers=headers)
        if request.method == "POST":
            stats["requests"] += 1
            if reply.status_code == 200:
                usage = reply.json().get("usage") or {}
                stats["prompt_tokens"] += int(usage.get("prompt_tokens") or 0)
                stats["completion_tokens"] += int(usage.get("completion_tokens") or 0)
            else:
                stats["failed"] += 1
        return Response(
            reply.content, status_code=reply.status_code, media_type=reply.headers.get("content-type")
        )

    async def get_stats(_: Request) -> Response:
        return JSONResponse(stats)

    app = Starlette(
        routes=[
            Route("/v1/{path:path}", forward, methods=["GET", "POST"]),
            Route("/stats", get_stats),
        ]
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])


def start(upstream: str, timeout_s: float = 3600.0) -> tuple[subprocess.Popen[str], str]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--upstream",
        upstream,
        "--timeout",
        str(timeout_s),
    ]
    proxy = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert proxy.stdout is not None
    line = proxy.stdout.readline()
    if not line.startswith("PORT "):
        proxy.kill()
        raise RuntimeError(f"usage proxy did not start: {line!r}")
    return proxy, f"http://127.0.0.1:{int(line.split()[1])}"


def stop(proxy: subprocess.Popen[str]) -> None:
    """Stop it even while it still forwards an abandoned request (uvicorn would wait for it)."""
    proxy.terminate()
    try:
        proxy.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proxy.kill()
        proxy.wait()
    if proxy.stdout is not None:
        proxy.stdout.close()


def get_stats(url: str) -> dict[str, Any]:
    import httpx

    data: dict[str, Any] = httpx.get(url + "/stats", timeout=5).json()
    return data


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--timeout", type=float, default=3600.0)
    args = parser.parse_args()
    serve(args.upstream, args.timeout)
