"""General replay text written by the base student itself, to keep its general ability while it learns.

A pretrained student's general ability is its language modelling. Text sampled from the base model at
temperature 1 is, by construction, what the base model predicts: training on it (or, better, anchoring
the tuned model's next-token distribution to the base's on it, `train.kl_weight`) pulls the student
back toward the base on ordinary text, while the taxonomy's records pull it toward the new knowledge.
No corpus has to be downloaded, and the text is never the forgetting check's: the shipped openings
(`data/general_openings.jsonl`) are on other topics.

Every continuation is one raw-completion request through the backend's request cache, so a killed run
resumes where it stopped and a second run on the same machine (same base, openings and parameters)
asks nothing at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from labalign.errors import LabalignError
from labalign.jsonl import iter_jsonl
from labalign.llm.types import Backend, GenerationParams, LLMRequest, LLMResult
from labalign.sdg.generate import write_jsonl
from labalign.sdg.rows import stable_int

Record = dict[str, Any]
SOURCE = "general_replay"


@dataclass(frozen=True)
class Opening:
    id: str
    style: str
    text: str


@dataclass(frozen=True)
class ReplayOptions:
    samples_per_opening: int = 2
    max_tokens: int = 160
    temperature: float = 1.0  # the base's own distribution: anything else is not what it predicts
    seed: int = 42


def default_openings_path() -> Path:
    return Path(str(resources.files("labalign.sdg") / "data" / "general_openings.jsonl"))


def load_openings(path: Path | None = None) -> list[Opening]:
    source = path or default_openings_path()
    out: list[Opening] = []
    for line, rec in iter_jsonl(source, hint='each line is {"id": ..., "text": ...}'):
        if not isinstance(rec, dict) or not isinstance(rec.get("text"), str) or not rec["text"].strip():
            raise LabalignError("an opening needs a non-empty 'text'", path=source, line=line)
        out.append(Opening(str(rec.get("id", f"line-{line}")), str(rec.get("style", "")), rec["text"]))
    if not out:
        raise LabalignError("no openings", path=source, hint="give at least one opening")
    return out


def replay_requests(openings: Sequence[Opening], options: ReplayOptions) -> list[LLMRequest]:
    """One raw completion request per opening and sample (each sample its own seed and cache key)."""
    return [
        LLMRequest(
            prompt=o.text,
            params=GenerationParams(
                temperature=options.temperature,
                top_p=1.0,
                max_tokens=options.max_tokens,
                seed=stable_int(f"{options.seed}/{o.id}/{i}") % 2**31,
            ),
            sample_index=i,
            tag=f"general_replay:{o.id}",
        )
        for o in openings
        for i in range(options.samples_per_opening)
    ]


def _record(opening: Opening, sample: int, text: str, model: str) -> Record:
    body = f"{opening.text}{text}".strip()
    rid = f"{opening.id}-{sample}"
    return {
        "id": rid,
        "messages": [{"role": "pretraining", "content": body}],
        "metadata": {
            "source": SOURCE,
            "opening": opening.id,
            "style": opening.style,
            "sample": sample,
            "model": model,
        },
        "unmask": False,
    }


async def build_general_replay(
    backend: Backend,
    openings: Sequence[Opening],
    options: ReplayOptions,
    *,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[list[Record], int]:
    """(pretraining records: each opening followed by the base model's continuation, failed requests).
    An empty continuation is left out; a short one stays (ending a text early is the base's behaviour
    too)."""
    requests = replay_requests(openings, options)
    origins = [(o, i) for o in openings for i in range(options.samples_per_opening)]
    done = 0

    def progress(_: LLMResult) -> None:
        nonlocal done
        done += 1
        if on_progress is not None:
            on_progress(done, len(requests))

    results = await backend.generate(requests, on_result=progress)
    records: list[Record] = []
    failed = 0
    for result, (opening, sample) in zip(results, origins, strict=True):  # results come in request order
        if not result.ok:
            failed += 1
            continue
        if not result.text.strip():
            continue
        records.append(_record(opening, sample, result.text, backend.identity))
    return records, failed


@dataclass(frozen=True)
class ReplayCounts:
    """What writing the general replay took: texts kept, requests failed, and how many answers came
    from the request cache (hits) or the model (misses)."""

    records: int
    failed: int
    hits: int
    misses: int


def generate_general_replay(
    student_dir: Path,
    out: Path,
    *,
    cache_path: Path,
    options: ReplayOptions,
    batch_size: int,
    openings: Path | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> ReplayCounts:
    """Write `out` (pretraining JSONL) from the base student in `student_dir` (a Hugging Face
    directory: the exact weights training starts from, decoded in batches), every request through the
    request cache at `cache_path`. Returns counts for the manifest."""
    import asyncio

    from labalign.llm.cache import CachedBackend
    from labalign.llm.hf import TransformersBackend

    chosen = load_openings(openings)
    backend = CachedBackend(TransformersBackend(student_dir, batch_size=batch_size), cache_path)

    async def go() -> tuple[list[Record], int]:
        try:
            return await build_general_replay(backend, chosen, options, on_progress=on_progress)
        finally:
            await backend.aclose()

    records, failed = asyncio.run(go())
    if not records:
        raise LabalignError(
            f"the base model wrote no usable general text ({failed} of "
            f"{len(chosen) * options.samples_per_opening} requests failed)",
            path=student_dir,
            hint="give your own general data with train.replay_data, or set train.replay_ratio 0",
        )
    write_jsonl(out, records)  # atomic, like every SDG output
    stats = backend.stats
    return ReplayCounts(len(records), failed, hits=stats["hits"], misses=stats["misses"])
