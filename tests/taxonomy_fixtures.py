"""Text of valid qna.yaml files that tests mutate; line numbers in comments are relied on."""

from __future__ import annotations

from pathlib import Path

from labalign.taxonomy import FileReport, ValidationOptions
from labalign.taxonomy.discover import TaxonomyFile
from labalign.taxonomy.validate import validate_file

SKILL = """\
version: 3
created_by: alice
task_description: Write a short poem about an everyday object.
seed_examples:
  - question: Write a poem about a kettle.
    answer: |
      Steam climbs and sings.
  - question: Write a poem about a spoon.
    answer: A small silver moon stirs the tea.
  - question: Write a poem about a lamp.
    answer: A patient sun that waits for night.
  - question: Write a poem about a door.
    answer: It keeps the cold out and the stories in.
  - question: Write a poem about a chair.
    answer: Four legs that never walk, one lap that always waits.
"""

CONTEXT = "The Quillmarrow lighthouse was built in 1852 by the harbour guild."


def knowledge(doc_repo: str = "docs", patterns: str = '["island.md"]') -> str:
    seeds = []
    for i in range(5):
        seeds.append(
            f"""\
  - context: |
      {CONTEXT} Fact number {i}.
    questions_and_answers:
      - question: Who built the lighthouse {i}?
        answer: The harbour guild.
      - question: When was lighthouse {i} built?
        answer: In 1852.
      - question: What is fact {i}?
        answer: Fact number {i}.
"""
        )
    return (
        "version: 3\n"
        "created_by: alice\n"
        "domain: History\n"
        "document_outline: The history of an invented island.\n"
        "seed_examples:\n" + "".join(seeds) + "document:\n"
        f"  repo: {doc_repo}\n"
        "  commit: local\n"
        f"  patterns: {patterns}\n"
    )


# In knowledge(): seed i starts on line 6 + 9*i; the document block starts on line 51.
KNOWLEDGE_DOCUMENT_LINE = 51


def write_leaf(root: Path, rel: str, text: str | bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def make_docs(root: Path) -> Path:
    docs = root / "knowledge" / "history" / "island" / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "island.md").write_text(f"# Island\n\n{CONTEXT}\n", encoding="utf-8")
    return docs


def check(root: Path, rel: str, text: str | bytes, **options: object) -> FileReport:
    path = write_leaf(root, rel, text)
    opts = ValidationOptions(cache_dir=root / ".cache", **options)  # type: ignore[arg-type]
    report, _ = validate_file(TaxonomyFile(path.resolve(), root.resolve()), opts, lambda s: len(s.split()))
    return report
