"""labalign's batched decoding (finished rows leave the batch) against transformers' `generate`.

Both run inside the same TransformersBackend on the same batch of held-out knowledge questions
(greedy, chat template, one batch), alternating, so a noisy machine affects both alike. Prints the
median wall times, their ratio, how many tokens each row wrote, and whether the answers are identical.
A tuned model (which stops after a sentence) gains the most; a base model that rambles to the token
limit in every row gains little.

    python benchmarks/decode_vs_generate.py --model runs/NAME/train/final [--questions 64] [--repeats 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

from labalign.llm.hf import TransformersBackend
from labalign.llm.types import GenerationParams, LLMRequest, Message

QUESTIONS = (
    Path(__file__).resolve().parent.parent
    / "examples"
    / "heldout"
    / "knowledge"
    / "history"
    / "quillmarrow_island"
    / "heldout.jsonl"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="Hugging Face model directory (default: embedded model)")
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    model_dir = args.model
    if model_dir is None:
        from labalign.llm.default_model import default_hf_dir
        from labalign.paths import default_cache_dir

        model_dir = default_hf_dir(default_cache_dir())
    lines = QUESTIONS.read_text(encoding="utf-8").splitlines()[: args.questions]
    params = GenerationParams(temperature=0.0, max_tokens=args.max_tokens)
    requests = [
        LLMRequest(messages=(Message("user", json.loads(line)["question"]),), params=params) for line in lines
    ]
    backend = TransformersBackend(model_dir, dtype="float32", batch_size=len(requests))
    times: dict[bool, list[float]] = {True: [], False: []}
    texts: dict[bool, list[str]] = {}
    tokens: dict[bool, list[int]] = {}
    for _ in range(args.repeats):
        for drop in (True, False):
            backend._drop_finished = drop
            started = time.perf_counter()
            results = asyncio.run(backend.generate(requests))
            times[drop].append(time.perf_counter() - started)
            texts[drop] = [r.choices[0].text for r in results]
            tokens[drop] = [r.completion_tokens for r in results]
    ours, peer = statistics.median(times[True]), statistics.median(times[False])
    same = sum(a == b for a, b in zip(texts[True], texts[False], strict=True))
    written = tokens[True]
    print(f"{len(requests)} questions, max {args.max_tokens} tokens, {model_dir}")
    print(
        f"  tokens written per row: median {statistics.median(written):.0f}, "
        f"max {max(written)}, total {sum(written)}"
    )
    print(f"  transformers generate: {peer:7.1f} s")
    print(f"  labalign hf_decode:    {ours:7.1f} s")
    print(f"speed-up {peer / ours:.2f}x; identical answers {same}/{len(requests)}")


if __name__ == "__main__":
    main()
