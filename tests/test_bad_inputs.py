"""A corpus of bad inputs, as a new user or an attacker would give them: each ends with exit code 1 and
one error line that names the file at fault and how to fix it; no traceback, and nothing already on
disk is changed or lost."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from labalign.cli import app
from tests.taxonomy_fixtures import SKILL, knowledge

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "taxonomy"
DEAD_TEACHER = "http://127.0.0.1:9/v1"  # nothing listens: a command that reaches it checked too late


@dataclass(frozen=True)
class Case:
    name: str
    setup: Callable[[Path], list[str]]  # builds the inputs under tmp_path, returns the CLI arguments
    names: str  # what the error line must mention (a file name)
    says: str  # and what it must say


def _leaf(root: Path, text: str, rel: str = "knowledge/history/island") -> Path:
    folder = root / "taxonomy" / rel
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "qna.yaml").write_text(text, encoding="utf-8")
    (folder / "docs").mkdir(exist_ok=True)
    (folder / "docs" / "island.md").write_text("# Island\n\nA fact.\n", encoding="utf-8")
    return root / "taxonomy"


def _outside(root: Path) -> Path:
    folder = root / "private"
    folder.mkdir(exist_ok=True)
    (folder / "island.md").write_text("secret\n", encoding="utf-8")
    return folder


def _symlinked(root: Path) -> list[str]:
    taxonomy = _leaf(root, knowledge(doc_repo="linked"))
    (taxonomy / "knowledge/history/island/linked").symlink_to(_outside(root), target_is_directory=True)
    return ["taxonomy", "validate", str(taxonomy), "--offline"]


def _folder_named_qna(root: Path) -> list[str]:
    (root / "taxonomy/compositional_skills/writing/poems/qna.yaml").mkdir(parents=True)
    return ["taxonomy", "validate", str(root / "taxonomy")]


def _skill_taxonomy(root: Path) -> Path:
    folder = root / "taxonomy/compositional_skills/writing/poems"
    folder.mkdir(parents=True)
    (folder / "qna.yaml").write_text(SKILL, encoding="utf-8")
    return root / "taxonomy"


def _generated(root: Path) -> Path:
    """An output folder from an earlier generation, which a failed command must leave as it is."""
    out = root / "data"
    leaf = out / "leaves/compositional_skills/writing/poems"
    leaf.mkdir(parents=True)
    (leaf / "samples.jsonl").write_text('{"messages": []}\n', encoding="utf-8")
    (out / "phase2.jsonl").write_text('{"messages": []}\n', encoding="utf-8")
    return out


def _broken_data(root: Path) -> Path:
    path = root / "phase1.jsonl"
    good = '{"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}\n'
    path.write_text(good + '{"messages": [{"role": "user", "content": "Q"}\n', encoding="utf-8")
    return path


def _empty(root: Path) -> Path:
    (root / "empty").mkdir()
    return root / "empty"


def _config(root: Path, text: str) -> Path:
    path = root / "labalign.yaml"
    path.write_text(text, encoding="utf-8")
    return path


CASES = [
    # 1. local documents outside the taxonomy
    Case(
        "repo-etc",
        lambda r: ["taxonomy", "validate", str(_leaf(r, knowledge(doc_repo="/etc"))), "--offline"],
        "qna.yaml",
        "outside the taxonomy",
    ),
    Case(
        "repo-dotdot",
        lambda r: (
            _outside(r),
            ["taxonomy", "validate", str(_leaf(r, knowledge(doc_repo="../../../../private"))), "--offline"],
        )[1],
        "qna.yaml",
        "outside the taxonomy",
    ),
    Case("repo-symlink", _symlinked, "qna.yaml", "outside the taxonomy"),
    Case(
        "repo-outside-in-generate",
        lambda r: ["generate", str(_leaf(r, knowledge(doc_repo="/etc"))), "--out", str(r / "out")],
        "qna.yaml",
        "outside the taxonomy",
    ),
    Case(
        "git-ext-transport",
        lambda r: ["taxonomy", "validate", str(_leaf(r, knowledge(doc_repo="'ext::sh -c id'")))],
        "qna.yaml",
        "transport",
    ),
    Case(
        "pattern-escapes",
        lambda r: [
            "taxonomy",
            "validate",
            str(_leaf(r, knowledge(patterns='["../../../../../etc/passwd"]'))),
        ],
        "qna.yaml",
        "'..'",
    ),
    # 5. empty or broken taxonomies
    Case("folder-named-qna", _folder_named_qna, "qna.yaml", "is a folder"),
    Case(
        "empty-validate",
        lambda r: ["taxonomy", "validate", str(_empty(r))],
        "empty",
        "no leaves",
    ),
    Case(
        "empty-generate",
        lambda r: ["generate", str(_empty(r)), "--teacher", DEAD_TEACHER, "--out", str(_generated(r))],
        "empty",
        "no leaves",
    ),
    Case(
        "invalid-yaml",
        lambda r: ["taxonomy", "validate", str(_leaf(r, "version: 3\nseed_examples: [\n"))],
        "qna.yaml",
        "error",
    ),
    # 6. checks before expensive work
    Case(
        "train-broken-line-before-the-model",
        lambda r: [
            "train",
            "--model",
            str(r / "no-such-model"),
            "--phase1",
            str(_broken_data(r)),
            "--out",
            str(r / "t"),
        ],
        "phase1.jsonl:2",
        "JSON",
    ),
    Case(
        "train-missing-file",
        lambda r: ["train", "--phase1", str(r / "missing.jsonl"), "--out", str(r / "t")],
        "missing.jsonl",
        "not found",
    ),
    Case(
        "data-show-leaf-escape",
        lambda r: [
            "data",
            "show",
            str(_generated(r)),
            "--leaf",
            os.path.relpath(
                _generated(r.parent / (r.name + "-other")) / "leaves/compositional_skills/writing/poems",
                r / "data" / "leaves",
            ),
        ],
        "data",
        "no samples for leaf",
    ),
    Case(
        "generate-pattern-matches-nothing",
        lambda r: [
            "generate",
            str(_leaf(r, knowledge(patterns='["nothing-*.md"]'))),
            "--teacher",
            DEAD_TEACHER,
            "--out",
            str(_generated(r)),
        ],
        "qna.yaml",
        "matched no file",
    ),
    Case(
        "config-unknown-key",
        lambda r: [
            "--config",
            str(_config(r, "teacher:\n  modle: x\n")),
            "taxonomy",
            "validate",
            str(EXAMPLES),
        ],
        "labalign.yaml",
        "modle",
    ),
    Case(
        "run-unknown-profile",
        lambda r: ["run", str(_skill_taxonomy(r)), "--profile", "fast", "--out", str(r / "run")],
        "",
        "unknown profile",
    ),
    Case(
        "teacher-not-a-url",
        lambda r: [
            "generate",
            str(_skill_taxonomy(r)),
            "--teacher",
            "ftp://host/v1",
            "--out",
            str(_generated(r)),
        ],
        "",
        "ftp",
    ),
]


def _snapshot(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_exit_1_and_loses_nothing(case: Case, tmp_path: Path) -> None:
    root = tmp_path / "case"
    root.mkdir()
    args = case.setup(root)
    before = _snapshot(tmp_path)
    result = CliRunner().invoke(app, args, env={"COLUMNS": "400", "LABALIGN_CACHE_DIR": str(tmp_path / "c")})
    output = result.stdout + result.stderr
    assert result.exit_code == 1, output
    assert "Traceback" not in output and "internal error" not in output
    errors = [line for line in output.splitlines() if "error" in line.lower()]
    assert errors, output
    line = errors[0] if len(errors) == 1 else next(e for e in errors if case.says in e)
    assert case.names in line and case.says in line, line
    if not case.name.startswith(
        ("repo-", "folder-", "empty-validate", "invalid", "git", "pattern", "config")
    ):
        assert "(" in line and ")" in line, f"no fix offered: {line}"  # the hint
    after = _snapshot(tmp_path)
    assert all(after.get(p) == data for p, data in before.items()), "a file on disk changed or vanished"


def test_the_examples_still_validate_and_stay_inside(tmp_path: Path) -> None:
    copy = tmp_path / "taxonomy"
    shutil.copytree(EXAMPLES, copy)
    result = CliRunner().invoke(app, ["taxonomy", "validate", str(copy), "--offline"])
    assert result.exit_code == 0, result.output


def test_validate_names_a_document_this_installation_cannot_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A PDF without the docling extra fails in validation, naming the file and the fix, not minutes
    # later in generation. None in sys.modules reads as "not installed".
    monkeypatch.setitem(sys.modules, "docling", None)
    taxonomy = _leaf(tmp_path, knowledge(patterns='["report.pdf"]'))
    (taxonomy / "knowledge/history/island/docs/report.pdf").write_bytes(b"%PDF-1.4\n")
    result = CliRunner().invoke(
        app,
        ["taxonomy", "validate", str(taxonomy)],
        env={"COLUMNS": "400", "LABALIGN_CACHE_DIR": str(tmp_path)},
    )
    output = result.stdout + result.stderr
    assert result.exit_code == 1, output
    line = next(line for line in output.splitlines() if "docling" in line)
    assert "report.pdf" in line and "pip install 'labalign[docling]'" in line and "qna.yaml" in output
    assert "Traceback" not in output
