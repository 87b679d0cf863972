"""Which waiting request llama.cpp answers next: shared prefix first (labalign) against arrival order.

SDG runs its leaves concurrently, and each leaf's prompts start with that leaf's own few-shot prefix.
With one model answering every request, arrival order interleaves the leaves, so each request finds
another leaf's prefix in the KV cache and evaluates its own again. This replays that pattern on the
embedded Gemma 3 270M: `--leaves` callers at once, each sending `--rows` short-answer requests that
share a ~300-token prefix, for `--rounds` rounds; the two orders alternate so that a noisy machine
affects both alike. Prints the median wall time per round of each, their ratio, and whether every
answer is the same in both orders.

    python benchmarks/llamacpp_request_order.py [--leaves 3] [--rows 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path
from typing import Literal

from labalign.documents.prose import sentences
from labalign.llm.default_model import default_gguf_path
from labalign.llm.llamacpp import LlamaCppBackend
from labalign.llm.types import GenerationParams, LLMRequest
from labalign.paths import default_cache_dir

EXAMPLE_LEAF = (
    Path(__file__).resolve().parent.parent / "examples/taxonomy/knowledge/history/quillmarrow_island"
)
DOCUMENT = EXAMPLE_LEAF / "quillmarrow_island.md"


def leaf_requests(leaves: int, rows: int) -> list[list[LLMRequest]]:
    """Per leaf: `rows` prompts with that leaf's own few-shot prefix and a different final sentence."""
    found = [s for s in sentences(DOCUMENT.read_text()) if len(s) > 60]
    params = GenerationParams(temperature=0.0, max_tokens=8)
    out = []
    for k in range(leaves):
        shots = found[k * 12 : k * 12 + 12]
        prefix = f"Task {k}: write one question that the fact answers.\n\n" + "".join(
            f"[Fact]\n{s}\n[Question]\nWhat does this say?\n\n" for s in shots
        )
        asks = found[len(found) - (k + 1) * rows : len(found) - k * rows]
        out.append([LLMRequest(prompt=f"{prefix}[Fact]\n{s}\n[Question]\n", params=params) for s in asks])
    return out


async def one_round(backend: LlamaCppBackend, batches: list[list[LLMRequest]]) -> tuple[float, list[str]]:
    started = time.perf_counter()
    results = await asyncio.gather(*(backend.generate(b) for b in batches))
    return time.perf_counter() - started, [r.text for batch in results for r in batch]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leaves", type=int, default=3)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    path = default_gguf_path(default_cache_dir())
    batches = leaf_requests(args.leaves, args.rows)
    orders: tuple[Literal["arrival", "shared_prefix"], ...] = ("arrival", "shared_prefix")
    backends = {order: LlamaCppBackend(path, order=order) for order in orders}
    times: dict[str, list[float]] = {order: [] for order in orders}
    answers: dict[str, list[str]] = {}
    try:
        for _ in range(args.rounds):
            for order in orders:
                seconds, answers[order] = asyncio.run(one_round(backends[order], batches))
                times[order].append(seconds)
    finally:
        for backend in backends.values():
            asyncio.run(backend.aclose())
    n = args.leaves * args.rows
    print(f"{args.leaves} leaves x {args.rows} requests at once, {args.rounds} rounds each, medians:")
    for order in orders:
        print(f"  {order:14s} {statistics.median(times[order]):6.2f} s per round of {n} requests")
    ratio = statistics.median(times["arrival"]) / statistics.median(times["shared_prefix"])
    same = answers["arrival"] == answers["shared_prefix"]
    print(f"shared-prefix order against arrival order: {ratio:.2f}x; same answers: {same}")


if __name__ == "__main__":
    main()
