"""Run instructlab-sdg's public `generate_data` once and print one JSON line with what it did.

Runs inside instructlab-sdg's own venv (benchmarks/sdg_vs_instructlab.py makes it), so it imports
nothing from labalign. `--no-batched-server` tells instructlab-sdg that the server takes one prompt
per request, as instructlab does with llama.cpp's server (it caches this on the client as
`server_supports_batched`; left unset, instructlab-sdg probes the server).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

STAGES = (
    "preprocess_taxonomy",
    "generate_taxonomy",
    "generate_taxonomy_eval",
    "postprocess_taxonomy",
    "mix_datasets",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="OpenAI-compatible base URL ending in /v1")
    parser.add_argument("--model", required=True)
    parser.add_argument("--taxonomy", required=True)
    parser.add_argument("--taxonomy-base", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--pipeline", default="full")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-cpus", type=int, default=10)
    parser.add_argument("--model-family", default="merlinite")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per HTTP request")
    parser.add_argument("--no-batched-server", action="store_true")
    args = parser.parse_args()

    import importlib
    from importlib.metadata import version

    import openai

    # The module, not the package's re-export of the function of the same name.
    stages = importlib.import_module("instructlab.sdg.generate_data")
    generate_data = stages.generate_data

    # Observe, not change: time each stage generate_data runs (generate_taxonomy is the SDG pipelines,
    # the others prepare seeds, write the test split, post-process and mix).
    timings: dict[str, float] = {}

    def timed(name: str) -> None:
        inner = getattr(stages, name)

        def wrapper(*a: object, **kw: object) -> object:
            started = time.perf_counter()
            try:
                return inner(*a, **kw)
            finally:
                timings[name] = timings.get(name, 0.0) + time.perf_counter() - started

        setattr(stages, name, wrapper)

    for name in STAGES:
        timed(name)

    logging.basicConfig(level=logging.WARNING)
    client = openai.OpenAI(base_url=args.url, api_key="EMPTY", timeout=args.timeout)
    if args.no_batched_server:
        client.server_supports_batched = False  # type: ignore[attr-defined]
    out = Path(args.out)
    start = time.perf_counter()
    generate_data(
        client=client,
        model_family=args.model_family,
        model_name=args.model,
        num_cpus=args.num_cpus,
        taxonomy=args.taxonomy,
        taxonomy_base=args.taxonomy_base,
        output_dir=str(out),
        pipeline=args.pipeline,
        batch_size=args.batch_size,
        checkpoint_dir=str(out / "checkpoints"),
        console_output=False,
    )
    seconds = time.perf_counter() - start
    # generate_taxonomy writes each leaf's pipeline output (the samples that passed every filter)
    # to generated_<date>/<leaf file>.jsonl, before any mixing (which may up- or down-sample).
    per_leaf = {
        path.stem: sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
        for path in sorted(out.glob("generated_*/*.jsonl"))
    }
    print(
        json.dumps(
            {
                "version": version("instructlab-sdg"),
                "seconds": seconds,
                "accepted": sum(per_leaf.values()),
                "per_leaf": per_leaf,
                "stages": timings,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
