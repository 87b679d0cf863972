"""`taxonomy diff` against real git repositories made in the test."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from labalign.errors import TaxonomyError
from labalign.taxonomy import changed_files
from tests.taxonomy_fixtures import SKILL


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def leaf(root: Path, name: str, text: str = SKILL) -> Path:
    path = root / name / "qna.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    git(tmp_path, "init", "-q", "-b", "main")
    leaf(tmp_path, "compositional_skills/a")
    leaf(tmp_path, "knowledge/b")
    (tmp_path / "README.md").write_text("taxonomy\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "base")
    return tmp_path


def test_modified_untracked_and_committed_since_base(repo: Path) -> None:
    git(repo, "checkout", "-q", "-b", "feature")
    leaf(repo, "compositional_skills/c")  # committed on the branch
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "c")
    (repo / "compositional_skills/a/qna.yaml").write_text(SKILL + "# edited\n")  # modified, unstaged
    leaf(repo, "knowledge/new")  # untracked
    leaf(repo, "foundational_skills/f")  # ignored unless asked
    (repo / "compositional_skills/a/notes.txt").write_text("not a leaf")
    result = changed_files(repo, "main")
    assert result.base == "main"
    assert [f.relpath for f in result.files] == [
        "compositional_skills/a/qna.yaml",
        "compositional_skills/c/qna.yaml",
        "knowledge/new/qna.yaml",
    ]
    assert "foundational_skills/f/qna.yaml" in [
        f.relpath for f in changed_files(repo, "main", include_foundational=True).files
    ]


def test_default_base_and_deleted_files(repo: Path) -> None:
    (repo / "knowledge/b/qna.yaml").unlink()
    assert changed_files(repo).files == []
    assert changed_files(repo).base == "main"


def test_empty_base_lists_everything(repo: Path) -> None:
    assert [f.relpath for f in changed_files(repo, "empty").files] == [
        "compositional_skills/a/qna.yaml",
        "knowledge/b/qna.yaml",
    ]


def test_taxonomy_in_a_subfolder_of_the_repository(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q", "-b", "main")
    (tmp_path / "code.py").write_text("x = 1\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "base")
    root = tmp_path / "taxonomy"
    leaf(root, "compositional_skills/a")
    (tmp_path / "code.py").write_text("x = 2\n")
    assert [f.relpath for f in changed_files(root, "main").files] == ["compositional_skills/a/qna.yaml"]


def test_not_a_git_repository(tmp_path: Path) -> None:
    leaf(tmp_path, "compositional_skills/a")
    result = changed_files(tmp_path)
    assert result.base.startswith("none") and len(result.files) == 1
    with pytest.raises(TaxonomyError, match="not a git repository"):
        changed_files(tmp_path, "main")


def test_unknown_ref(repo: Path) -> None:
    with pytest.raises(TaxonomyError, match="git ref 'nope' not found"):
        changed_files(repo, "nope")


def test_repository_without_commits(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    leaf(tmp_path, "compositional_skills/a")
    assert [f.relpath for f in changed_files(tmp_path).files] == ["compositional_skills/a/qna.yaml"]
