"""Validation verdicts, messages and positions on malformed inputs (each case: message and line)."""

from __future__ import annotations

from pathlib import Path

import pytest

from labalign.taxonomy import validate_paths
from labalign.taxonomy.validate import ValidationOptions
from tests.taxonomy_fixtures import KNOWLEDGE_DOCUMENT_LINE, SKILL, check, knowledge, make_docs

SKILL_REL = "compositional_skills/writing/poems/qna.yaml"
KNOW_REL = "knowledge/history/island/qna.yaml"


def replace(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


# (case id, text, severity, line, column or None, yaml_path, message fragment)
SKILL_CASES: list[tuple[str, str, str, int, int | None, str, str]] = [
    (
        "missing-created-by",
        replace(SKILL, "created_by: alice\n", ""),
        "error",
        1,
        1,
        ".",
        "missing required key 'created_by'",
    ),
    (
        "missing-task",
        replace(SKILL, "task_description: Write a short poem about an everyday object.\n", ""),
        "error",
        1,
        1,
        ".",
        "missing required key 'task_description'",
    ),
    ("unknown-root-key", SKILL + "colour: red\n", "error", 16, 1, ".colour", "unknown key 'colour'"),
    (
        "unknown-seed-key",
        replace(
            SKILL,
            "    answer: A small silver moon stirs the tea.\n",
            "    answer: A small silver moon stirs the tea.\n    hint: tea\n",
        ),
        "error",
        10,
        5,
        ".seed_examples[1].hint",
        "unknown key 'hint'",
    ),
    (
        "four-seeds",
        SKILL.rsplit("  - question: Write a poem about a chair.", 1)[0],
        "error",
        5,
        3,
        ".seed_examples",
        "at least 5 items",
    ),
    (
        "empty-question",
        replace(SKILL, "question: Write a poem about a lamp.", 'question: ""'),
        "error",
        10,
        15,
        ".seed_examples[2].question",
        "must not be empty",
    ),
    (
        "numeric-question",
        replace(SKILL, "question: Write a poem about a lamp.", "question: 42"),
        "error",
        10,
        15,
        ".seed_examples[2].question",
        "42 is not of type 'string'",
    ),
    (
        "null-answer",
        replace(SKILL, "answer: A patient sun that waits for night.", "answer:"),
        "error",
        11,
        12,
        ".seed_examples[2].answer",
        "None is not of type 'string'",
    ),
    (
        "missing-answer",
        replace(SKILL, "    answer: A patient sun that waits for night.\n", ""),
        "error",
        10,
        5,
        ".seed_examples[2]",
        "missing required key 'answer'",
    ),
    (
        "identical-seeds",
        replace(
            SKILL,
            "  - question: Write a poem about a door.\n    answer: It keeps the cold out "
            "and the stories in.\n",
            "  - question: Write a poem about a spoon.\n    answer: A small silver moon stirs the tea.\n",
        ),
        "error",
        5,
        3,
        ".seed_examples",
        "items must be unique",
    ),
    (
        "seeds-not-list",
        replace(SKILL, "seed_examples:\n", "seed_examples: {}\nx_seeds:\n"),
        "error",
        4,
        16,
        ".seed_examples",
        "is not of type 'array'",
    ),
    (
        "version-4",
        replace(SKILL, "version: 3", "version: 4"),
        "error",
        1,
        10,
        ".version",
        "unsupported schema version 4",
    ),
    (
        "version-string",
        replace(SKILL, "version: 3", 'version: "3"'),
        "error",
        1,
        10,
        ".version",
        "is not of type 'integer'",
    ),
    (
        "version-word",
        replace(SKILL, "version: 3", "version: three"),
        "error",
        1,
        10,
        ".version",
        "'three' is not of type 'integer'",
    ),
    (
        "date-created-by",
        replace(SKILL, "created_by: alice", "created_by: 2024-01-01"),
        "error",
        2,
        13,
        ".created_by",
        "is not of type 'string'",
    ),
    (
        "top-level-list",
        "- question: a\n  answer: b\n",
        "error",
        1,
        1,
        ".",
        "top-level element must be a mapping",
    ),
    (
        "syntax-unclosed",
        replace(SKILL, "created_by: alice", "created_by: [alice"),
        "error",
        3,
        17,
        ".",
        "YAML syntax error",
    ),
    (
        "syntax-tab",
        replace(SKILL, "    answer: A small silver moon", "\tanswer: A small silver moon"),
        "error",
        9,
        1,
        ".",
        "YAML syntax error",
    ),
    (
        "python-tag",
        replace(SKILL, "created_by: alice", "created_by: !!python/object/apply:os.system [ls]"),
        "error",
        2,
        13,
        ".",
        "cannot be read",
    ),
    ("recursive-alias", SKILL + "extra: &a [*a]\n", "error", 16, 8, ".", "recursive"),
    (
        "duplicate-key",
        replace(SKILL, "created_by: alice\n", "created_by: alice\ncreated_by: bob\n"),
        "warning",
        3,
        1,
        ".created_by",
        'duplication of key "created_by"',
    ),
    (
        "trailing-spaces",
        replace(SKILL, "created_by: alice\n", "created_by: alice   \n"),
        "warning",
        2,
        18,
        ".created_by",
        "trailing spaces",
    ),
    (
        "duplicate-question",
        replace(SKILL, "question: Write a poem about a door.", "question: write a poem  about a KETTLE."),
        "warning",
        12,
        15,
        ".seed_examples[3].question",
        "duplicate question (same as line 5)",
    ),
    (
        "long-answer",
        replace(SKILL, "answer: A patient sun that waits for night.", "answer: " + "word " * 260),
        "warning",
        11,
        13,
        ".seed_examples[2].answer",
        "answer has 260 words",
    ),
    ("empty-file", "", "warning", 1, 1, ".", "the file is empty"),
    ("comment-only", "# nothing here\n", "warning", 1, 1, ".", "the file is empty"),
]


@pytest.mark.parametrize(
    ("case", "text", "severity", "line", "column", "ypath", "fragment"),
    SKILL_CASES,
    ids=[c[0] for c in SKILL_CASES],
)
def test_skill_case(
    tmp_path: Path,
    case: str,
    text: str,
    severity: str,
    line: int,
    column: int | None,
    ypath: str,
    fragment: str,
) -> None:
    report = check(tmp_path, SKILL_REL, text)
    matches = [p for p in report.problems if fragment in p.message]
    assert matches, f"{case}: no problem mentions {fragment!r}: {report.problems}"
    p = matches[0]
    assert (p.severity, p.line, p.yaml_path) == (severity, line, ypath), p
    if column is not None:
        assert p.column == column, p
    if severity == "warning":
        assert not report.errors, report.errors


def test_valid_skill_has_no_problems(tmp_path: Path) -> None:
    report = check(tmp_path, SKILL_REL, SKILL)
    assert report.problems == []


def test_strict_turns_warnings_into_errors(tmp_path: Path) -> None:
    text = replace(SKILL, "created_by: alice\n", "created_by: alice   \n")
    assert not check(tmp_path, SKILL_REL, text).errors
    strict = check(tmp_path, SKILL_REL, text, strict=True)
    assert [(p.line, p.severity) for p in strict.problems] == [(2, "error")]


def test_version_1_skill_is_valid_with_one_seed_and_not_linted(tmp_path: Path) -> None:
    text = "created_by: bob\ntask_description: t\nseed_examples:\n- question: q   \n  answer: a\n"
    assert check(tmp_path, SKILL_REL, text).problems == []


def test_version_2_skill_is_checked_against_v2(tmp_path: Path) -> None:
    text = replace(SKILL, "version: 3", "version: 2")
    assert check(tmp_path, SKILL_REL, text).problems == []
    four = text.rsplit("  - question: Write a poem about a chair.", 1)[0]
    assert "at least 5 items" in check(tmp_path, SKILL_REL, four).errors[0].message


def test_misnamed_file_is_an_error(tmp_path: Path) -> None:
    report = check(tmp_path, "compositional_skills/writing/poems/qna.yml", SKILL)
    assert [(p.line, p.message) for p in report.errors] == [
        (1, 'taxonomy file must be named "qna.yaml", not "qna.yml"')
    ]


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    report = check(tmp_path, SKILL_REL, SKILL.encode() + b"extra: \xff\xfe\n")
    assert report.errors[0].line == 16 and "not valid UTF-8" in report.errors[0].message


def test_alias_bomb_is_bounded(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    report = check(tmp_path, SKILL_REL, "\n".join(lines) + "\n")
    assert "through aliases" in report.errors[0].message and report.errors[0].line > 1


def test_huge_file_is_refused(tmp_path: Path) -> None:
    report = check(tmp_path, SKILL_REL, SKILL + "# " + "x" * (3 * 2**20) + "\n")
    assert "over the" in report.errors[0].message and "limit" in report.errors[0].message


def test_skill_schema_applies_by_folder(tmp_path: Path) -> None:
    make_docs(tmp_path)
    report = check(tmp_path, "compositional_skills/history/island/qna.yaml", knowledge())
    messages = " ".join(p.message for p in report.errors)
    assert "unknown key 'domain'" in messages and "missing required key 'task_description'" in messages


def test_schema_by_document_key_outside_taxonomy_folders(tmp_path: Path) -> None:
    make_docs(tmp_path / "loose")
    report = check(tmp_path, "loose/qna.yaml", replace(knowledge(), "version: 3", "version: 2"))
    assert "Version 2 is not supported for knowledge" in report.errors[0].message


# --- knowledge ---------------------------------------------------------------------------------


def test_valid_knowledge_resolves_local_documents(tmp_path: Path) -> None:
    make_docs(tmp_path)
    assert check(tmp_path, KNOW_REL, knowledge()).problems == []


KNOWLEDGE_CASES: list[tuple[str, str, int, str, str]] = [
    (
        "knowledge-v2",
        replace(knowledge(), "version: 3", "version: 2"),
        1,
        ".version",
        "Version 2 is not supported for knowledge",
    ),
    (
        "knowledge-v1",
        replace(knowledge(), "version: 3\n", ""),
        1,
        ".version",
        "Version 1 is not supported for knowledge",
    ),
    (
        "two-qna",
        replace(knowledge(), "      - question: What is fact 0?\n        answer: Fact number 0.\n", ""),
        9,
        ".seed_examples[0].questions_and_answers",
        "at least 3 items",
    ),
    ("missing-document", knowledge().split("document:\n")[0], 1, ".", "missing required key 'document'"),
    (
        "missing-outline",
        replace(knowledge(), "document_outline: The history of an invented island.\n", ""),
        1,
        ".",
        "missing required key 'document_outline'",
    ),
    (
        "empty-patterns",
        knowledge(patterns="[]"),
        KNOWLEDGE_DOCUMENT_LINE + 3,
        ".document.patterns",
        "at least 1 items",
    ),
    (
        "document-unknown-key",
        knowledge() + "  branch: main\n",
        KNOWLEDGE_DOCUMENT_LINE + 4,
        ".document.branch",
        "unknown key 'branch'",
    ),
    (
        "pattern-escapes",
        knowledge(patterns='["../../secret.md"]'),
        KNOWLEDGE_DOCUMENT_LINE + 3,
        ".document.patterns",
        "..",
    ),
    (
        "pattern-matches-nothing",
        knowledge(patterns='["missing.md"]'),
        KNOWLEDGE_DOCUMENT_LINE + 3,
        ".document.patterns",
        "missing.md",
    ),
    (
        "ext-transport",
        knowledge(doc_repo="'ext::sh -c touch% /tmp/pwned'"),
        KNOWLEDGE_DOCUMENT_LINE + 1,
        ".document.repo",
        "ext::",
    ),
    (
        "dash-repo",
        knowledge(doc_repo="'--upload-pack=touch /tmp/pwned'"),
        KNOWLEDGE_DOCUMENT_LINE + 1,
        ".document.repo",
        "-",
    ),
]


@pytest.mark.parametrize(
    ("case", "text", "line", "ypath", "fragment"), KNOWLEDGE_CASES, ids=[c[0] for c in KNOWLEDGE_CASES]
)
def test_knowledge_case(tmp_path: Path, case: str, text: str, line: int, ypath: str, fragment: str) -> None:
    make_docs(tmp_path)
    report = check(tmp_path, KNOW_REL, text)
    matches = [p for p in report.errors if fragment in p.message]
    assert matches, f"{case}: no error mentions {fragment!r}: {report.problems}"
    assert (matches[0].line, matches[0].yaml_path) == (line, ypath), matches[0]


def test_qna_extra_key_is_a_warning_as_the_published_schema_allows_it(tmp_path: Path) -> None:
    """InstructLab's v3 knowledge schema does not close Q&A items (no unevaluatedProperties there):
    the verdict follows the published schema (valid), and we warn that the key is ignored."""
    make_docs(tmp_path)
    text = replace(
        knowledge(),
        "        answer: The harbour guild.\n",
        "        answer: The harbour guild.\n        source: p1\n",
    )
    report = check(tmp_path, KNOW_REL, text)
    assert not report.errors
    assert [(p.line, p.yaml_path) for p in report.warnings] == [
        (11, ".seed_examples[0].questions_and_answers[0].source")
    ]
    assert "ignored" in report.warnings[0].message


def test_long_context_and_window_warnings(tmp_path: Path) -> None:
    make_docs(tmp_path)
    long_context = replace(knowledge(), "Fact number 0.", "Fact number 0. " + "word " * 520)
    report = check(tmp_path, KNOW_REL, long_context)
    assert not report.errors
    assert [(p.line, p.yaml_path) for p in report.warnings if "context has" in p.message] == [
        (6, ".seed_examples[0].context")
    ]
    small = check(tmp_path, KNOW_REL, knowledge(), context_window=1100, reserved_tokens=512, chunk_tokens=500)
    assert any("over the 88 tokens" in p.message for p in small.warnings), small.warnings


def test_offline_skips_remote_documents(tmp_path: Path) -> None:
    text = knowledge(doc_repo="https://example.invalid/org/repo.git")
    text = text.replace("commit: local", "commit: 0123abcd")
    assert check(tmp_path, KNOW_REL, text, offline=True).problems == []


def test_validate_paths_finds_every_file(tmp_path: Path) -> None:
    make_docs(tmp_path)
    (tmp_path / KNOW_REL).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / KNOW_REL).write_text(knowledge())
    (tmp_path / SKILL_REL).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / SKILL_REL).write_text(SKILL)
    bad = tmp_path / "compositional_skills/bad/qna.yaml"
    bad.parent.mkdir(parents=True)
    bad.write_text("version: 3\n")
    ignored = tmp_path / "foundational_skills/x/qna.yaml"
    ignored.parent.mkdir(parents=True)
    ignored.write_text("bogus: 1\n")
    result = validate_paths([tmp_path], ValidationOptions(cache_dir=tmp_path / ".cache"))
    assert [f.relpath for f in result.report.files] == [
        "compositional_skills/bad/qna.yaml",
        SKILL_REL,
        KNOW_REL,
    ]
    assert [leaf.name for leaf in result.leaves] == [
        "compositional_skills/writing/poems",
        "knowledge/history/island",
    ]
    assert result.report.error_count == 3
    with_foundational = validate_paths(
        [tmp_path], ValidationOptions(cache_dir=tmp_path / ".cache", include_foundational=True)
    )
    assert "foundational_skills/x/qna.yaml" in [f.relpath for f in with_foundational.report.files]


def test_leaf_kinds_and_seed_shapes(tmp_path: Path) -> None:
    make_docs(tmp_path)
    (tmp_path / KNOW_REL).write_text(knowledge())
    grounded = (
        "\n".join(
            line if not line.startswith("  - question") else "  - context: notes\n    " + line.strip()[2:]
            for line in SKILL.splitlines()
        )
        + "\n"
    )
    (tmp_path / "compositional_skills/grounded/notes").mkdir(parents=True)
    (tmp_path / "compositional_skills/grounded/notes/qna.yaml").write_text(grounded)
    (tmp_path / SKILL_REL).parent.mkdir(parents=True)
    (tmp_path / SKILL_REL).write_text(SKILL)
    leaves = {leaf.name: leaf for leaf in validate_paths([tmp_path]).leaves}
    assert leaves["knowledge/history/island"].kind == "knowledge"
    assert leaves["knowledge/history/island"].question_count == 15
    assert leaves["knowledge/history/island"].document is not None
    assert leaves["compositional_skills/grounded/notes"].kind == "grounded_skill"
    assert leaves["compositional_skills/grounded/notes"].seed_examples[0].context == "notes"
    assert leaves["compositional_skills/writing/poems"].kind == "freeform_skill"
    assert [s.line for s in leaves["compositional_skills/writing/poems"].seed_examples] == [5, 8, 10, 12, 14]


def test_example_taxonomy_is_valid() -> None:
    root = Path(__file__).resolve().parents[1] / "examples" / "taxonomy"
    result = validate_paths([root], ValidationOptions(strict=True))
    assert result.report.ok, result.report.lines()
    assert sorted(leaf.kind for leaf in result.leaves) == ["freeform_skill", "grounded_skill", "knowledge"]
