"""A knowledge leaf reads local documents only inside its taxonomy, or inside a folder the user allowed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from labalign.cli import app
from labalign.documents import DocumentError, DocumentSource, resolve_documents
from tests.taxonomy_fixtures import knowledge

runner = CliRunner()
REPO_LINE = 52  # knowledge()'s `repo:` line (its document block starts on line 51)


def make_taxonomy(tmp_path: Path, repo: str) -> tuple[Path, Path]:
    """A taxonomy with one knowledge leaf whose document.repo is `repo`; also a folder outside it."""
    taxonomy = tmp_path / "taxonomy"
    leaf = taxonomy / "knowledge" / "history" / "island"
    leaf.mkdir(parents=True)
    (leaf / "qna.yaml").write_text(knowledge(doc_repo=repo), encoding="utf-8")
    (leaf / "docs").mkdir()
    (leaf / "docs" / "island.md").write_text("# Island\n\nInside.\n", encoding="utf-8")
    outside = tmp_path / "private"
    outside.mkdir()
    (outside / "island.md").write_text("# Secret\n\nOutside.\n", encoding="utf-8")
    return taxonomy, outside


def resolve(source: DocumentSource, leaf_dir: Path, roots: list[Path]) -> list[str]:
    files = resolve_documents(source, base_dir=leaf_dir, cache_dir=leaf_dir / "cache", allowed_roots=roots)
    assert files is not None
    return [f.path.read_text(encoding="utf-8") for f in files]


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "symlink", "file-url"])
def test_folders_outside_the_taxonomy_are_refused(tmp_path: Path, kind: str) -> None:
    taxonomy, outside = make_taxonomy(tmp_path, "docs")
    leaf_dir = taxonomy / "knowledge" / "history" / "island"
    if kind == "symlink":
        (leaf_dir / "linked").symlink_to(outside, target_is_directory=True)
    repo = {
        "absolute": str(outside),
        "dotdot": os.path.relpath(outside, leaf_dir),  # ../../../../private
        "symlink": "linked",
        "file-url": outside.as_uri(),
    }[kind]
    source = DocumentSource(repo, "0" * 40, ("island.md",))
    with pytest.raises(DocumentError, match="outside the taxonomy") as info:
        resolve(source, leaf_dir, [taxonomy])
    assert info.value.hint and "documents.allowed_roots" in info.value.hint
    if kind != "file-url":  # allowing the folder lets it through (a file:// URL still needs a git repo)
        assert resolve(source, leaf_dir, [taxonomy, outside]) == ["# Secret\n\nOutside.\n"]


def test_etc_is_refused_and_inside_is_read(tmp_path: Path) -> None:
    taxonomy, _ = make_taxonomy(tmp_path, "docs")
    leaf_dir = taxonomy / "knowledge" / "history" / "island"
    with pytest.raises(DocumentError, match="outside the taxonomy"):
        resolve(DocumentSource("/etc", "", ("hostname",)), leaf_dir, [taxonomy])
    assert resolve(DocumentSource("docs", "", ("island.md",)), leaf_dir, [taxonomy]) == [
        "# Island\n\nInside.\n"
    ]
    # The leaf's own folder, written as '.', is inside too.
    assert resolve(DocumentSource(".", "", ("docs/island.md",)), leaf_dir, [taxonomy])


@pytest.mark.parametrize("repo", ["/etc", "../../../../private"])
def test_validate_fails_naming_the_repo_line_and_the_setting(tmp_path: Path, repo: str) -> None:
    taxonomy, outside = make_taxonomy(tmp_path, repo)
    result = runner.invoke(app, ["taxonomy", "validate", str(taxonomy), "--offline"])
    assert result.exit_code == 1, result.output
    line = next(ln for ln in result.output.splitlines() if "outside the taxonomy" in ln)
    assert f"qna.yaml:{REPO_LINE}:" in line and "[.document.repo]" in line
    assert "documents.allowed_roots" in line and "Traceback" not in result.output
    if repo.startswith(".."):
        allowed = runner.invoke(
            app, ["taxonomy", "validate", str(taxonomy), "--offline", "--allow-documents", str(outside)]
        )
        assert allowed.exit_code == 0, allowed.output


def test_allowed_roots_setting_from_the_config_file(tmp_path: Path) -> None:
    taxonomy, outside = make_taxonomy(tmp_path, "../../../../private")
    config = tmp_path / "labalign.yaml"
    config.write_text(f"documents:\n  allowed_roots: [{outside}]\n", encoding="utf-8")
    leaf = "knowledge/history/island"
    result = runner.invoke(
        app, ["--config", str(config), "taxonomy", "show", leaf, "-t", str(taxonomy), "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    assert '"documents": [' in result.output and str(outside / "island.md") in result.output
    refused = runner.invoke(app, ["taxonomy", "show", leaf, "-t", str(taxonomy)])
    assert refused.exit_code == 1 and "outside the taxonomy" in refused.output
