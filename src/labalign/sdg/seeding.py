"""Input rows for a leaf's pipeline. Leaf-local seeding: a prompt only ever sees its own leaf's seeds."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

from labalign.documents import Chunk
from labalign.sdg.blocks import LLMBlockConfig
from labalign.sdg.pipeline import PipelineConfig
from labalign.sdg.rows import ROW_ID, Row, stable_int
from labalign.taxonomy import Leaf

# Kept samples one input row yields on average (after filters): a skill row makes one question,
# a knowledge chunk row makes several Q&A pairs over its augmented contexts.
EXPECTED_PER_ROW = {"freeform_skill": 1.0, "grounded_skill": 1.0, "knowledge": 4.0, "knowledge_facts": 1.0}


def _example(leaf: Leaf, index: int) -> dict[str, Any]:
    seed = leaf.seed_examples[index]
    qna = [{"question": q.question, "answer": q.answer} for q in seed.qna]
    return {"index": index, "context": seed.context or "", "qna": qna, **qna[0]}


def _pick(leaf: Leaf, rng: random.Random, k: int) -> dict[str, Any]:
    """`examples` for the few-shot prompt, and a `contrast` example (another seed of the same leaf,
    or None) that judge prompts turn into a negative: a document with an answer it does not support."""
    n = len(leaf.seed_examples)
    indices = rng.sample(range(n), min(k + 1, n))
    contrast = _example(leaf, indices[k]) if len(indices) > k else None
    return {"examples": [_example(leaf, i) for i in indices[:k]], "contrast": contrast}


def rows_for_round(
    leaf: Leaf,
    config: PipelineConfig,
    *,
    needed: int,
    round_no: int,
    seed: int,
    chunks: Sequence[Chunk] = (),
) -> list[Row]:
    """The rows that start round `round_no`, sized so the round should yield `needed` samples."""
    # Blocks with n > 1 choices multiply rows (e.g. several questions per grounded context).
    per_row = EXPECTED_PER_ROW[config.kind] * math.prod(
        block.n for block in config.blocks if isinstance(block, LLMBlockConfig)
    )
    count = max(1, math.ceil(needed * config.oversample / per_row))
    rng = random.Random(stable_int(f"{seed}/{leaf.name}/round{round_no}"))
    base: dict[str, Any] = {
        "leaf": leaf.name,
        "task_description": leaf.task_description,
        "domain": leaf.domain or "",
        "document_outline": leaf.task_description if leaf.kind == "knowledge" else "",
        "grounded": leaf.kind == "grounded_skill",
        "round": round_no,
    }
    rows: list[Row] = []
    if leaf.kind == "knowledge":
        if not chunks:
            return []
        # Walk the chunks in a seeded order so a small budget still spreads over the document,
        # moving on to other chunks in later rounds.
        order = list(range(len(chunks)))
        random.Random(stable_int(f"{seed}/{leaf.name}/chunks")).shuffle(order)
        start = round_no * count
        for i in range(count):
            chunk = chunks[order[(start + i) % len(order)]]
            rows.append(
                {
                    **base,
                    ROW_ID: f"{leaf.name}/r{round_no}/c{chunk.index}/{i}",
                    "chunk": chunk.text,
                    "chunk_index": chunk.index,
                    "chunk_source": chunk.source,
                    "chunk_lines": [chunk.start_line, chunk.end_line],
                    "heading": " > ".join(chunk.heading_path),
                    **_pick(leaf, rng, config.examples_per_prompt),
                }
            )
        return rows
    for i in range(count):
        rows.append(
            {
                **base,
                ROW_ID: f"{leaf.name}/r{round_no}/{i}",
                **_pick(leaf, rng, config.examples_per_prompt),
            }
        )
    return rows


def seed_texts(leaf: Leaf) -> dict[str, list[str]]:
    """The leaf's own texts per column, so dedup can drop generated near-copies of a seed."""
    questions = [q.question for s in leaf.seed_examples for q in s.qna]
    contexts = [s.context for s in leaf.seed_examples if s.context]
    return {"question": questions, "context": contexts}
