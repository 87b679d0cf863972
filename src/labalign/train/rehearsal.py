"""Self-synthesized rehearsal: before training, the student writes passages of its own (sampled from
nothing, as in pre-training), and they are trained as plain text in every phase beside the taxonomy data.

Why: tuning a small model hard on a narrow taxonomy erodes its general language modelling (the quick
profile's forgetting check measured general-text perplexity 22.9 -> 258.6 without it). Rehearsing on
real pre-training data would be best but is not at hand; the model's own samples are the next best
thing: they pull it back towards the distribution it started from, whatever that was
(Huang et al. 2024, "Mitigating Catastrophic Forgetting in Large Language Models with Self-Synthesized
Rehearsal", arXiv 2403.01244). They never include the forgetting check's text.

The file is written once per run directory (`rehearsal.jsonl`, pretraining-format records) and re-used
on resume; every passage is kept in a request cache as it is written, so a killed synthesis resumes,
and generation is seeded, so a re-run writes the same passages.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from labalign.errors import LabalignError
from labalign.progress import PhaseCallback
from labalign.train.data import PRETRAINING

FILE = "rehearsal.jsonl"
CACHE = "rehearsal-cache.sqlite"
TEMPERATURE = 1.0  # the model's own distribution, untempered: that is what rehearsal preserves
TOP_P = 0.95  # cuts the long tail of the 262k-token vocabulary, whose rare picks derail a passage
MIN_WORDS = 12  # a passage shorter than this (an empty or one-line sample) rehearses little
_LAST_END = re.compile(r"[.!?][\"')\]\u201d\u2019]*(?=\s)|\n")


def passage(text: str, finished: bool) -> str:
    """A sample as a passage: cut at its last sentence end unless the model ended it itself, so the
    EOS the trainer appends never follows half a sentence."""
    text = text.strip()
    if not finished:
        ends = [m.end() for m in _LAST_END.finditer(text + " ")]
        text = text[: ends[-1]].strip() if ends else ""
    return text


def _prompt(tokenizer: Any) -> str:
    """What a pre-training document starts from: BOS where the tokenizer adds one, else the
    end-of-text token that separates documents (GPT-2 and Qwen style)."""
    if tokenizer("")["input_ids"]:
        return ""
    if tokenizer.eos_token:
        return str(tokenizer.eos_token)
    raise LabalignError(
        "the student's tokenizer has neither a BOS nor an EOS token to start rehearsal text from",
        hint="set train.rehearsal_samples to 0",
    )


def synthesize(
    model_dir: Path,
    out_dir: Path,
    *,
    samples: int,
    max_tokens: int,
    seed: int,
    batch_size: int = 16,
    on_progress: PhaseCallback | None = None,
) -> Path:
    """Write `samples` rehearsal passages of the model in `model_dir` to `out_dir/rehearsal.jsonl`
    (kept if it already holds them for these settings) and return its path."""
    from labalign.llm.cache import CachedBackend
    from labalign.llm.hf import TransformersBackend
    from labalign.llm.types import GenerationParams, LLMRequest, LLMResult

    path = out_dir / FILE
    settings = {"model": str(model_dir), "samples": samples, "max_tokens": max_tokens, "seed": seed}
    tag = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    if _complete(path, tag):
        return path
    model = TransformersBackend(model_dir, batch_size=batch_size, seed=seed)
    prompt = _prompt(model.tokenizer)
    out_dir.mkdir(parents=True, exist_ok=True)
    backend = CachedBackend(model, out_dir / CACHE)
    params = GenerationParams(temperature=TEMPERATURE, top_p=TOP_P, max_tokens=max_tokens, seed=seed)
    # One request per passage (sample_index i seeds it): the same passages whatever the batch size.
    requests = [
        LLMRequest(prompt=prompt, params=params, sample_index=i, tag="rehearsal") for i in range(samples)
    ]
    done = 0

    def report(_: LLMResult) -> None:
        nonlocal done
        done += 1
        if on_progress is not None:
            on_progress("rehearsal text", done, samples)

    async def go() -> list[LLMResult]:
        try:
            return await backend.generate(requests, on_result=report)
        finally:
            await backend.aclose()

    results = sorted(asyncio.run(go()), key=lambda r: r.request.sample_index)
    failed = next((r.error for r in results if r.error is not None), None)
    if failed is not None:
        raise LabalignError(f"the student could not write rehearsal text: {failed.message}")
    records = []
    for result in results:
        choice = result.choices[0]
        text = passage(choice.text, choice.finish_reason == "stop")
        if text and len(text.split()) >= MIN_WORDS:
            records.append(
                {
                    "id": f"rehearsal-{tag}-{result.request.sample_index}",
                    "messages": [{"role": PRETRAINING, "content": text}],
                    "metadata": {"variant": "rehearsal", "tag": tag},
                    "unmask": True,
                }
            )
    if not records:
        raise LabalignError(
            f"none of the student's {samples} rehearsal samples had {MIN_WORDS} words",
            hint="raise train.rehearsal_tokens or set train.rehearsal_samples to 0",
        )
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    os.replace(tmp, path)  # atomic: a file that exists is whole
    return path


def _complete(path: Path, tag: str) -> bool:
    """The file exists and was written for the same settings."""
    if not path.is_file():
        return False
    try:
        with path.open(encoding="utf-8") as f:
            first = json.loads(f.readline())
    except (OSError, ValueError):
        return False
    return isinstance(first, dict) and first.get("metadata", {}).get("tag") == tag
