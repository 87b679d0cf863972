"""A validated taxonomy leaf in the shape the data generator needs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from labalign.documents import DocumentSource

LeafKind = Literal["knowledge", "freeform_skill", "grounded_skill"]


@dataclass(frozen=True)
class QnA:
    question: str
    answer: str


@dataclass(frozen=True)
class SeedExample:
    """A skill seed (one Q&A, optional context) or a knowledge seed (one context, several Q&As)."""

    index: int
    line: int
    context: str | None
    qna: tuple[QnA, ...]


@dataclass(frozen=True)
class Leaf:
    name: str  # folder relative to the taxonomy root, e.g. "knowledge/history/vellmoor"
    path: Path  # the qna.yaml
    kind: LeafKind
    version: int
    created_by: str
    task_description: str  # skills: task_description; knowledge: document_outline
    domain: str | None
    seed_examples: tuple[SeedExample, ...]
    document: DocumentSource | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    root: Path | None = field(default=None, compare=False)  # the taxonomy root it was found under

    @property
    def taxonomy_root(self) -> Path:
        """The folder a leaf's local documents must lie in (its own folder when found alone)."""
        return self.root if self.root is not None else self.path.parent

    @property
    def question_count(self) -> int:
        return sum(len(s.qna) for s in self.seed_examples)


def build_leaf(
    name: str,
    path: Path,
    version: int,
    schema_name: str,
    data: dict[str, Any],
    lines: list[int],
    root: Path | None = None,
) -> Leaf:
    """Turn schema-valid data into a Leaf; `lines` are the seed examples' line numbers."""
    seeds: list[SeedExample] = []
    is_knowledge = schema_name == "knowledge"
    for i, item in enumerate(data.get("seed_examples", [])):
        line = lines[i] if i < len(lines) else 1
        if "questions_and_answers" in item:
            qna = tuple(QnA(str(q["question"]), str(q["answer"])) for q in item["questions_and_answers"])
        else:
            qna = (QnA(str(item["question"]), str(item["answer"])),)
        context = item.get("context")
        seeds.append(SeedExample(i, line, str(context) if context is not None else None, qna))
    document = None
    if is_knowledge:
        doc = data["document"]
        document = DocumentSource(
            str(doc["repo"]), str(doc["commit"]), tuple(str(p) for p in doc["patterns"])
        )
        kind: LeafKind = "knowledge"
        description = str(data.get("document_outline", ""))
    else:
        kind = "grounded_skill" if any(s.context for s in seeds) else "freeform_skill"
        description = str(data.get("task_description", ""))
    return Leaf(
        name=name,
        path=path,
        kind=kind,
        version=version,
        created_by=str(data.get("created_by", "")),
        task_description=description,
        domain=str(data["domain"]) if "domain" in data else None,
        seed_examples=tuple(seeds),
        document=document,
        raw=data,
        root=root,
    )
