"""Fact questions ("answer-first" knowledge data): every sentence of a knowledge leaf's documents is
the answer to one question that the teacher writes for it.

Why: asked for question-and-answer pairs, a small teacher writes answers that are often wrong, and its
own judges let many through; and it only covers the chunks it is shown. Writing the question that a
given sentence answers is an easier task, the answer is the document's own words (faithful by
construction), and every stated fact gets a question, so the student sees the whole document in the
question-to-answer shape it is asked in. The measured effect is in the README (quick profile).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from labalign.documents import Chunk
from labalign.documents.prose import sentences
from labalign.sdg.rows import ROW_ID, Row, stable_int
from labalign.taxonomy import Leaf
from labalign.textmetrics import token_f1

FACT_ID = "fact_id"  # the sentence a row asks about, the same in every round


def fact_examples(leaf: Leaf) -> list[dict[str, Any]]:
    """Few-shot examples from the leaf's seeds: each seed question with the sentence of its context
    that best matches its answer (and the sentence before it, the context a question may need)."""
    out: list[dict[str, Any]] = []
    for seed in leaf.seed_examples:
        found = sentences(seed.context or "")
        if not found:
            continue
        for qna in seed.qna:
            scores = [token_f1(s, qna.answer) for s in found]
            best = max(range(len(found)), key=scores.__getitem__)
            if scores[best] >= 0.3:  # the answer is really that sentence, not a synthesis of several
                before = found[best - 1] if best > 0 else ""
                out.append(
                    {"index": seed.index, "before": before, "fact": found[best], "question": qna.question}
                )
    return out


def fact_rows(leaf: Leaf, chunks: Sequence[Chunk], *, seed: int, examples_per_prompt: int) -> list[Row]:
    """One row per sentence of every chunk, with `answer` already set (the sentence) and the leaf's
    few-shot examples."""
    examples = fact_examples(leaf)
    # One seeded pick of examples for the whole leaf: every prompt then starts with the same few-shot
    # prefix, which servers with prefix caching (llama.cpp, vLLM) evaluate once instead of per row.
    rng = random.Random(stable_int(f"{seed}/{leaf.name}/facts"))
    picked = rng.sample(examples, min(examples_per_prompt, len(examples)))
    base: dict[str, Any] = {"leaf": leaf.name, "domain": leaf.domain or "", "round": 0}
    rows: list[Row] = []
    for chunk in chunks:
        found = sentences(chunk.text)
        heading = " > ".join(h for h in chunk.heading_path if h.strip())
        for i, sentence in enumerate(found):
            fact_id = f"{leaf.name}/facts/c{chunk.index}/s{i}"
            rows.append(
                {
                    **base,
                    ROW_ID: fact_id,
                    FACT_ID: fact_id,
                    "fact": sentence,
                    "answer": sentence,
                    "before": found[i - 1] if i > 0 else "",
                    "heading": heading,
                    "chunk": chunk.text,
                    "chunk_index": chunk.index,
                    "chunk_source": chunk.source,
                    "chunk_lines": [chunk.start_line, chunk.end_line],
                    "examples": picked,
                }
            )
    return rows


def retry_row(row: Row, round_no: int) -> Row:
    """`row` asked again in a later round: a new row id gives its choices new sampling seeds (and new
    request-cache keys), so the teacher writes different questions."""
    return {**row, ROW_ID: f"{row[FACT_ID]}/r{round_no}", "round": round_no}
