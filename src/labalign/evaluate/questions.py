"""Held-out questions per leaf: hand-written ones, generated ones never trained on, and seed questions."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from labalign.errors import LabalignError
from labalign.jsonl import iter_jsonl
from labalign.taxonomy import Leaf

Source = Literal["heldout", "generated", "seed"]
GROUNDED_PROMPT = "{context}\n\n{question}"  # the same shape the grounded skill was trained on


@dataclass(frozen=True)
class EvalQuestion:
    leaf: str
    kind: str
    source: Source
    question: str
    reference: str
    context: str | None = None

    def prompt(self) -> str:
        """What the model is asked: closed-book for knowledge, context + question for grounded skills."""
        if self.kind == "grounded_skill" and self.context:
            return GROUNDED_PROMPT.format(context=self.context.strip(), question=self.question.strip())
        return self.question.strip()


def default_heldout_dir(taxonomy: Path) -> Path | None:
    """`examples/heldout` beside `examples/taxonomy`: the layout the example taxonomy ships with."""
    candidate = taxonomy.resolve().parent / "heldout"
    return candidate if candidate.is_dir() else None


def _read_jsonl(path: Path) -> list[dict[str, object]]:
    records = []
    for line, record in iter_jsonl(path, hint='each line is {"question": ..., "reference": ...}'):
        if (
            not isinstance(record, dict)
            or not record.get("question")
            or not (record.get("reference") or record.get("answer"))
        ):
            raise LabalignError("a held-out record needs 'question' and 'reference'", path=path, line=line)
        records.append(record)
    return records


def gather(
    leaves: Sequence[Leaf],
    *,
    heldout_dir: Path | None = None,
    generated: Path | None = None,
    include_seeds: bool = True,
) -> list[EvalQuestion]:
    """Every evaluation question for the given leaves, in a stable order."""
    by_name = {leaf.name: leaf for leaf in leaves}
    out: list[EvalQuestion] = []
    for leaf in leaves:
        if heldout_dir is not None:
            path = heldout_dir / leaf.name / "heldout.jsonl"
            if path.is_file():
                out += _records(leaf, "heldout", _read_jsonl(path))
        if generated is not None:
            path = generated / "leaves" / leaf.name / "heldout.jsonl"
            if path.is_file():
                out += _records(leaf, "generated", _read_jsonl(path))
        if include_seeds:
            for seed in leaf.seed_examples:
                for qna in seed.qna:
                    out.append(
                        EvalQuestion(leaf.name, leaf.kind, "seed", qna.question, qna.answer, seed.context)
                    )
    missing = [name for name in by_name if not any(q.leaf == name for q in out)]
    if missing and not include_seeds:
        raise LabalignError(
            f"no evaluation questions for {', '.join(missing)}",
            hint="give --heldout DIR or --data DIR, or keep the seed questions",
        )
    return out


def _records(leaf: Leaf, source: Source, records: Iterable[dict[str, object]]) -> list[EvalQuestion]:
    return [
        EvalQuestion(
            leaf.name,
            leaf.kind,
            source,
            str(r["question"]),
            str(r.get("reference") or r.get("answer")),
            str(r["context"]) if r.get("context") else None,
        )
        for r in records
    ]
