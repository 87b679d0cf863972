"""Our own checks on schema-valid leaves, beyond what InstructLab's schemas say. All are warnings
(errors under --strict): they flag seed data that makes generation worse, not data that breaks it."""

from __future__ import annotations

import re
from collections.abc import Callable

from labalign.taxonomy.leaf import Leaf
from labalign.taxonomy.problems import FileReport
from labalign.taxonomy.yamlpos import NodeLocator

_WS = re.compile(r"\s+")


def _norm(text: str) -> str:
    return _WS.sub(" ", text).strip().casefold()


def _words(text: str) -> int:
    return len(text.split())


def check_duplicate_questions(leaf: Leaf, report: FileReport, where: NodeLocator) -> None:
    """The same question twice in one leaf: the teacher sees it twice and the answers may disagree."""
    seen: dict[str, tuple[int, int | None]] = {}
    for seed in leaf.seed_examples:
        for j, qna in enumerate(seed.qna):
            key = _norm(qna.question)
            here = (seed.index, j if leaf.kind == "knowledge" else None)
            if key in seen:
                first = seen[key]
                line, col, ypath = where.question(*here)
                first_line, _, _ = where.question(*first)
                report.add("warning", f"duplicate question (same as line {first_line})", line, col, ypath)
            else:
                seen[key] = here


def check_ignored_keys(leaf: Leaf, report: FileReport, where: NodeLocator) -> None:
    """InstructLab's knowledge schema leaves Q&A items open: extra keys pass but are never used."""
    if leaf.kind != "knowledge":
        return
    for i, seed in enumerate(leaf.raw.get("seed_examples", [])):
        for j, item in enumerate(seed.get("questions_and_answers", [])):
            for key in item:
                if key not in ("question", "answer"):
                    line, col, ypath = where.at(
                        ["seed_examples", i, "questions_and_answers", j, str(key)], prefer_key=True
                    )
                    report.add(
                        "warning",
                        f"key {key!r} is ignored (a Q&A item has only question and answer)",
                        line,
                        col,
                        ypath,
                    )


def check_lengths(
    leaf: Leaf, report: FileReport, where: NodeLocator, max_context: int, max_answer: int
) -> None:
    """Long knowledge contexts and answers crowd the teacher's prompt and the student's window."""
    for seed in leaf.seed_examples:
        if leaf.kind == "knowledge" and seed.context and _words(seed.context) > max_context:
            line, col, ypath = where.field(seed.index, "context")
            report.add(
                "warning",
                f"context has {_words(seed.context)} words, over the {max_context}-word guideline; "
                "split it into smaller excerpts",
                line,
                col,
                ypath,
            )
        for j, qna in enumerate(seed.qna):
            if _words(qna.answer) > max_answer:
                line, col, ypath = where.answer(seed.index, j if leaf.kind == "knowledge" else None)
                report.add(
                    "warning",
                    f"answer has {_words(qna.answer)} words, over the {max_answer}-word guideline",
                    line,
                    col,
                    ypath,
                )


def seed_prompt_text(leaf: Leaf) -> str:
    """Everything of a leaf that goes into a teacher prompt as few-shot content."""
    parts = [leaf.task_description, leaf.domain or ""]
    for seed in leaf.seed_examples:
        parts.append(seed.context or "")
        for qna in seed.qna:
            parts.extend((qna.question, qna.answer))
    return "\n".join(p for p in parts if p)


def check_context_size(
    leaf: Leaf,
    report: FileReport,
    count_tokens: Callable[[str], int],
    *,
    context_window: int,
    reserved: int,
    chunk_tokens: int,
) -> None:
    """The leaf's seed content (plus one document chunk for knowledge) must fit the teacher's window."""
    tokens = count_tokens(seed_prompt_text(leaf))
    budget = context_window - reserved - (chunk_tokens if leaf.kind == "knowledge" else 0)
    if tokens > budget:
        report.add(
            "warning",
            f"seed content is about {tokens} tokens, over the {budget} tokens the teacher's "
            f"{context_window}-token window leaves for it; shorten or remove seed examples, "
            "or use a teacher with a larger window (teacher.context_window)",
            1,
            1,
            ".seed_examples",
        )
