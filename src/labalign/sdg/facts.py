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
import re
from collections.abc import Sequence
from typing import Any

from labalign.documents import Chunk
from labalign.sdg.rows import ROW_ID, Row, stable_int
from labalign.taxonomy import Leaf
from labalign.textmetrics import token_f1

# A sentence ends at . ! ? (and any closing quote or bracket) before a space and a capital, digit or
# opening quote; a dot after a one-letter word ("c. 1200", "J. Pellow") is an abbreviation.
_SENTENCE_END = re.compile(r"(?<!\b[A-Za-z])[.!?][\"')\]\u201d\u2019]*(?=\s+[A-Z0-9\"'(\u201c\u2018])")
_LIST_MARK = re.compile(r"^\s*(?:[-*+]|\d{1,9}[.)])\s+")
_HEADING = re.compile(r"^ {0,3}#{1,6}(?:\s|$)")
_FENCE = re.compile(r"^ {0,3}(?:`{3,}|~{3,})")
MIN_WORDS = 5  # shorter "sentences" are captions, labels or fragments, not facts worth a question
FACT_ID = "fact_id"  # the sentence a row asks about, the same in every round


def paragraphs(text: str) -> list[str]:
    """The prose of a markdown chunk: paragraphs and list items as single lines (headings, tables and
    code left out)."""
    out: list[str] = []
    current: list[str] = []
    in_fence = False
    skipping = False  # inside a list item that is left out (its continuation lines go too)

    def flush() -> None:
        if current:
            out.append(" ".join(current))
            current.clear()

    for line in text.splitlines():
        if _FENCE.match(line):
            flush()
            in_fence = not in_fence
            continue
        stripped = line.strip()
        if in_fence or not stripped or _HEADING.match(line) or stripped.startswith("|"):
            flush()
            skipping = False
            continue
        if _LIST_MARK.match(line):
            flush()
            stripped = _LIST_MARK.sub("", line).strip()
            # Timeline and glossary entries ("1911 — the Great Fall ...", '"tarn" — a small lake')
            # are left out: the student copied their terse form into its answers (6 of 12 held-out
            # answers in one quick run). A list item that reads as a sentence is kept.
            skipping = not stripped[:1].isupper()
        if skipping:
            continue
        current.append(stripped)
    flush()
    return out


def sentences(text: str) -> list[str]:
    """The sentences of a chunk's prose, in order, each with at least MIN_WORDS words."""
    out: list[str] = []
    for paragraph in paragraphs(text):
        start = 0
        ends = [m.end() for m in _SENTENCE_END.finditer(paragraph)]
        for end in [*ends, len(paragraph)]:
            sentence = paragraph[start:end].strip()
            start = end
            if len(sentence.split()) >= MIN_WORDS:
                out.append(sentence)
    return out


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
