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

For the embedded default student, labalign ships that text (`data/general_replay_<gguf sha256>.jsonl`,
written by the same weights from the same openings and parameters): writing it took about 6 minutes
on 2 cores, the largest part of a machine's first `labalign run`. It is used only when the student
was converted from exactly that GGUF and the run asks for exactly what the file was written with.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from labalign.config import Settings
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

    @classmethod
    def from_settings(cls, settings: Settings) -> ReplayOptions:
        """What `labalign run` asks the base student for (train.general_replay_*, sdg.seed)."""
        return cls(
            samples_per_opening=settings.train.general_replay_samples,
            max_tokens=settings.train.general_replay_tokens,
            seed=settings.sdg.seed,
        )


def default_openings_path() -> Path:
    return Path(str(resources.files("labalign.sdg") / "data" / "general_openings.jsonl"))


def shipped_paths(gguf_sha256: str) -> tuple[Path, Path]:
    """(records, key) of the replay text shipped for the student converted from this GGUF."""
    folder = Path(str(resources.files("labalign.sdg") / "data"))
    stem = f"general_replay_{gguf_sha256[:16]}"
    return folder / f"{stem}.jsonl", folder / f"{stem}.json"


def shipped_key(gguf_sha256: str, options: ReplayOptions) -> dict[str, Any]:
    """What a shipped replay file was written from: the base's GGUF, the openings and the parameters."""
    return {
        "gguf_sha256": gguf_sha256,
        "openings_sha256": hashlib.sha256(default_openings_path().read_bytes()).hexdigest(),
        "samples_per_opening": options.samples_per_opening,
        "max_tokens": options.max_tokens,
        "temperature": options.temperature,
        "seed": options.seed,
    }


def shipped_replay(student_dir: Path, options: ReplayOptions) -> list[Record] | None:
    """The replay text shipped for this student with the default openings and these options, or None
    (another student, or other parameters: the base writes its own)."""
    from labalign.llm.convert import read_marker

    marker = read_marker(student_dir)
    sha = marker.get("gguf_sha256") if marker else None
    if not isinstance(sha, str) or not sha:
        return None
    records_path, key_path = shipped_paths(sha)
    try:
        key = json.loads(key_path.read_text(encoding="utf-8")).get("key")
    except (OSError, ValueError, AttributeError):
        return None
    if key != shipped_key(sha, options) or not records_path.is_file():
        return None
    return [rec for _, rec in iter_jsonl(records_path)]


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
    """What writing the general replay took: texts kept, requests failed, how many answers came from
    the request cache (hits) or the model (misses), and whether the text was the one shipped for the
    student (no request at all)."""

    records: int
    failed: int
    hits: int
    misses: int
    shipped: bool = False


def generate_general_replay(
    student_dir: Path,
    out: Path,
    *,
    cache_path: Path,
    options: ReplayOptions,
    batch_size: int,
    openings: Path | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    use_shipped: bool = True,
) -> ReplayCounts:
    """Write `out` (pretraining JSONL) from the base student in `student_dir` (a Hugging Face
    directory: the exact weights training starts from, decoded in batches), every request through the
    request cache at `cache_path`; or the text shipped for this student (see shipped_replay) when
    `use_shipped` and it applies. Returns counts for the manifest."""
    import asyncio

    shipped = shipped_replay(student_dir, options) if use_shipped and openings is None else None
    if shipped:
        write_jsonl(out, shipped)
        return ReplayCounts(len(shipped), 0, hits=0, misses=0, shipped=True)

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
