"""Padding-aware decode batches (`hf_decode.plan_batches`) against fixed chunks of `batch_size` rows.

The example taxonomy's evaluation questions (its held-out questions, all leaves, and with `--data` a
run's generated held-out questions too, as `labalign run` asks them), answered greedily by one
TransformersBackend, once with batches planned by padding cost and once in fixed chunks of
`--batch-size` rows in length order (labalign's batching before). The two alternate, so a noisy
machine affects both alike. Prints the median wall times, their ratio, the prompt tokens each
evaluates (padding included) and whether the answers are identical.

    python benchmarks/decode_batch_plan.py [--model DIR] [--batch-size 64] [--data runs/NAME/data]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from labalign.config import load_settings
from labalign.evaluate.branch import score_model
from labalign.evaluate.questions import default_heldout_dir, gather
from labalign.llm import hf_decode
from labalign.llm.default_model import default_hf_dir
from labalign.llm.hf import TransformersBackend
from labalign.paths import default_cache_dir
from labalign.taxonomy import ValidationOptions, load_leaves

PlanFn = Callable[..., list[tuple[int, int]]]
TAXONOMY = Path(__file__).resolve().parent.parent / "examples" / "taxonomy"
planned = hf_decode.plan_batches
padded_tokens: dict[str, int] = {}


def fixed_chunks(
    prompt_lengths: Sequence[int], max_new: Sequence[int], *, batch_size: int, step_cost: int
) -> list[tuple[int, int]]:
    n = len(prompt_lengths)
    return [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def _counting(plan: PlanFn, way: str) -> PlanFn:
    """`plan`, recording how many prompt tokens its batches evaluate."""

    def counted(
        lengths: Sequence[int], max_new: Sequence[int], *, batch_size: int, step_cost: int
    ) -> list[tuple[int, int]]:
        spans = plan(lengths, max_new, batch_size=batch_size, step_cost=step_cost)
        padded_tokens[way] = sum((end - start) * lengths[start] for start, end in spans)
        return spans

    return counted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="Hugging Face model directory (default: embedded model)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--data", type=Path, help="a run's data folder: also its generated held-out questions"
    )
    args = parser.parse_args()

    settings = load_settings()
    leaves = load_leaves([TAXONOMY], ValidationOptions.from_settings(settings, check_documents=False))
    questions = gather(
        leaves, heldout_dir=default_heldout_dir(TAXONOMY), generated=args.data, include_seeds=False
    )
    backend = TransformersBackend(
        args.model or default_hf_dir(default_cache_dir()), batch_size=args.batch_size
    )
    ways: dict[str, PlanFn] = {"fixed": fixed_chunks, "planned": planned}
    times: dict[str, list[float]] = {way: [] for way in ways}
    answers: dict[str, list[str]] = {}
    for _ in range(args.repeats):
        for way, plan in ways.items():
            hf_decode.plan_batches = _counting(plan, way)
            started = time.perf_counter()
            scored = asyncio.run(score_model(backend, questions, max_tokens=args.max_tokens))
            times[way].append(time.perf_counter() - started)
            answers[way] = scored.answers
    hf_decode.plan_batches = planned
    asyncio.run(backend.aclose())
    print(f"{len(questions)} questions, batch size {args.batch_size}, {args.repeats} repeat(s), medians:")
    for way in ways:
        print(
            f"  {way:8s} {statistics.median(times[way]):7.1f} s, "
            f"{padded_tokens[way]} prompt tokens evaluated (padding included)"
        )
    ratio = statistics.median(times["fixed"]) / statistics.median(times["planned"])
    same = answers["fixed"] == answers["planned"]
    print(f"planned batches against fixed chunks: {ratio:.2f}x; same answers: {same}")


if __name__ == "__main__":
    main()
