"""A simulated OpenAI-compatible inference server with K parallel slots, shared by the benchmarks.

Like a GPU server at its batch limit (vLLM's continuous batching): every sequence (one prompt x one
of its `n` choices) holds a slot for `tokens x ms_per_token`, sequences beyond K queue, and a request
with several prompts or choices answers when its last sequence is done. Tokens are counted the same
way for everyone (`count_tokens`: words and punctuation marks), in the completions served, after
`stop` and `max_tokens` are applied, which is also what the slot time is charged for.

What the model writes comes from a teacher:
- `fixed`: `tokens` x "tok" whatever the prompt (benchmarks/llm_client.py);
- `sdg`: benchmarks/_sdg_teacher.py, answers in the format each SDG prompt asks for.

Runs in its own process (so it does not share a GIL with the client): `start()` spawns
`python _slot_server.py --serve ...` and reads the port it prints; 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

MODEL = "sim"
_TOKEN = re.compile(r"\w+|[^\w\s]")

# (prompt, choice index, request seed) -> (the whole text the model would write, kind of request)
Teacher = Callable[[str, int, int | None], tuple[str, str]]


def count_tokens(text: str) -> int:
    return len(_TOKEN.findall(text))


def finish(text: str, stop: Sequence[str], max_tokens: int | None) -> tuple[str, int, str]:
    """The served text after stop sequences and max_tokens, its token count and finish reason."""
    reason = "stop"
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    if cuts:
        text = text[: min(cuts)]
    spans = [m.end() for m in _TOKEN.finditer(text)]
    if max_tokens is not None and len(spans) > max_tokens:
        text, reason = text[: spans[max_tokens - 1]], "length"
        return text, max_tokens, reason
    return text, len(spans), reason


def fixed_teacher(tokens: int) -> Teacher:
    answer = " ".join(["tok"] * tokens)
    return lambda prompt, choice, seed: (answer, "fixed")


def serve(slots: int, ms_per_token: float, teacher: Teacher) -> None:
    """Run the server until killed; prints `PORT <n>` once it listens."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    gate = asyncio.Semaphore(slots)
    stats: dict[str, Any] = {
        "requests": 0,
        "sequences": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "busy": 0,
        "max_busy": 0,
        "kinds": Counter(),
    }

    async def sequence(prompt: str, choice: int, body: dict[str, Any]) -> tuple[str, int, str]:
        text, kind = teacher(prompt, choice, body.get("seed"))
        stop = body.get("stop") or []
        text, tokens, reason = finish(text, [stop] if isinstance(stop, str) else stop, body.get("max_tokens"))
        async with gate:  # beyond `slots`, sequences wait here: the server's queue
            stats["busy"] += 1
            stats["max_busy"] = max(stats["max_busy"], stats["busy"])
            await asyncio.sleep(tokens * ms_per_token / 1000)
            stats["busy"] -= 1
        stats["sequences"] += 1
        stats["completion_tokens"] += tokens
        stats["kinds"][kind] += 1
        return text, tokens, reason

    async def run(prompts: list[str], body: dict[str, Any]) -> tuple[list[tuple[str, int, str]], int]:
        stats["requests"] += 1
        n = int(body.get("n") or 1)
        prompt_tokens = sum(count_tokens(p) for p in prompts)
        stats["prompt_tokens"] += prompt_tokens
        # Choice p*n + j is prompt p's j-th answer, as OpenAI orders them.
        jobs = [sequence(p, j, body) for p in prompts for j in range(n)]
        return list(await asyncio.gather(*jobs)), prompt_tokens

    def usage(prompt_tokens: int, served: list[tuple[str, int, str]]) -> dict[str, int]:
        completion = sum(t for _, t, _ in served)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
        }

    async def chat(request: Request) -> Response:
        body = json.loads(await request.body())
        prompt = "\n".join(str(m.get("content") or "") for m in body["messages"])
        served, prompt_tokens = await run([prompt], body)
        choices = [
            {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason}
            for i, (text, _, reason) in enumerate(served)
        ]
        return JSONResponse(
            {
                "id": "sim",
                "object": "chat.completion",
                "created": 0,
                "model": body.get("model", MODEL),
                "choices": choices,
                "usage": usage(prompt_tokens, served),
            }
        )

    async def completions(request: Request) -> Response:
        body = json.loads(await request.body())
        prompt = body["prompt"]
        served, prompt_tokens = await run([prompt] if isinstance(prompt, str) else list(prompt), body)
        choices = [
            {"index": i, "text": text, "logprobs": None, "finish_reason": reason}
            for i, (text, _, reason) in enumerate(served)
        ]
        return JSONResponse(
            {
                "id": "sim",
                "object": "text_completion",
                "created": 0,
                "model": body.get("model", MODEL),
                "choices": choices,
                "usage": usage(prompt_tokens, served),
            }
        )

    async def models(_: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def get_stats(_: Request) -> Response:
        return JSONResponse({**stats, "kinds": dict(stats["kinds"])})

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
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


def start(
    slots: int, ms_per_token: float, *, teacher: str = "fixed", tokens: int = 64
) -> tuple[subprocess.Popen[str], str]:
    """Spawn the server; returns the process and its base URL (without /v1)."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--slots",
        str(slots),
        "--ms-per-token",
        str(ms_per_token),
        "--teacher",
        teacher,
        "--tokens",
        str(tokens),
    ]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    line = server.stdout.readline()
    if not line.startswith("PORT "):
        server.kill()
        raise RuntimeError(f"simulated server did not start: {line!r}")
    return server, f"http://127.0.0.1:{int(line.split()[1])}"


def stop(server: subprocess.Popen[str]) -> None:
    server.terminate()
    try:
        server.wait(timeout=5)
    except subprocess.TimeoutExpired:  # uvicorn waits for requests still in flight
        server.kill()
        server.wait()
    if server.stdout is not None:
        server.stdout.close()


def get_stats(url: str) -> dict[str, Any]:
    import httpx

    data: dict[str, Any] = httpx.get(url + "/stats", timeout=5).json()
    return data


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slots", type=int, required=True)
    parser.add_argument("--ms-per-token", type=float, required=True)
    parser.add_argument("--teacher", choices=["fixed", "sdg"], default="fixed")
    parser.add_argument("--tokens", type=int, default=64, help="answer length of the fixed teacher")
    args = parser.parse_args()
    if args.teacher == "sdg":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _sdg_teacher import answer

        serve(args.slots, args.ms_per_token, answer)
    else:
        serve(args.slots, args.ms_per_token, fixed_teacher(args.tokens))


if __name__ == "__main__":
    main()
