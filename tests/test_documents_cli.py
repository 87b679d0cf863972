"""`labalign documents chunk`: table and JSON output, offline skip, errors as DocumentError."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from labalign.cli.documents import app
from labalign.documents import DocumentError

runner = CliRunner()

GIT_ENV = {
    "GIT_AUTHOR_NAME": "labalign tests",
    "GIT_AUTHOR_EMAIL": "tests@labalign.invalid",
    "GIT_COMMITTER_NAME": "labalign tests",
    "GIT_COMMITTER_EMAIL": "tests@labalign.invalid",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}

DOC = "# Vellmoor\n\nAn island.\n\n## Harbor [bold]North[/bold]\n\nForty boats fish here.\n"


def leaf(root: Path, document: str, name: str = "knowledge/geo/vellmoor") -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "qna.yaml").write_text(f"version: 3\ndomain: geo\n{document}", encoding="utf-8")
    return folder


@pytest.fixture
def local_leaf(tmp_path: Path) -> Path:
    folder = leaf(tmp_path / "taxonomy", "document:\n  repo: docs\n  commit: ''\n  patterns: ['*.md']\n")
    (folder / "docs").mkdir()
    (folder / "docs" / "vellmoor.md").write_text(DOC, encoding="utf-8")
    return folder


def test_table_output(local_leaf: Path) -> None:
    result = runner.invoke(app, ["chunk", str(local_leaf), "--max-tokens", "24"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "vellmoor.md:1-3" in result.output and "vellmoor.md:5-7" in result.output
    # The shared title is left out; a heading is data, never rich markup.
    assert "Harbor [bold]North[/bold]" in result.output and "Vellmoor > Harbor" not in result.output
    assert "2 chunks from 1 file of " in result.output and "budget 24" in result.output


def test_json_output_and_taxonomy_relative_leaf(local_leaf: Path) -> None:
    taxonomy = local_leaf.parents[2]
    result = runner.invoke(
        app,
        ["chunk", "knowledge/geo/vellmoor/qna.yaml", "--taxonomy", str(taxonomy), "--format", "json"],
    )
    assert result.exit_code == 0, result.output
    chunks = json.loads(result.stdout)
    assert chunks == [
        {
            "index": 0,
            "text": DOC.rstrip(),
            "heading_path": ["Vellmoor"],
            "source": "vellmoor.md",
            "start_line": 1,
            "end_line": 7,
            "n_tokens": chunks[0]["n_tokens"],
        }
    ]


def test_git_leaf_and_offline(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    env = {**os.environ, **GIT_ENV}
    (source / "doc.md").write_text(DOC)
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "doc"]):
        subprocess.run(["git", *args], cwd=source, env=env, check=True, capture_output=True)
    sha = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=source, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()
    folder = leaf(
        tmp_path / "taxonomy",
        f"document:\n  repo: {source.as_uri()}\n  commit: {sha}\n  patterns:\n    - doc.md\n",
    )
    cache = tmp_path / "cache"
    # A file:// repository is on this machine, outside the taxonomy: it has to be allowed.
    env = {"LABALIGN_CACHE_DIR": str(cache), "LABALIGN_DOCUMENTS__ALLOWED_ROOTS": json.dumps([str(source)])}
    offline = runner.invoke(app, ["chunk", str(folder), "--offline", "--format", "json"], env=env)
    assert offline.exit_code == 0 and offline.stdout.strip() == "[]"
    assert "skipped" in offline.stderr
    fetched = runner.invoke(app, ["chunk", str(folder)], env={"COLUMNS": "200", **env})
    assert fetched.exit_code == 0, fetched.output
    assert f"@ {sha[:12]}" in fetched.output
    cached = runner.invoke(app, ["chunk", str(folder), "--offline", "--format", "json"], env=env)
    assert json.loads(cached.stdout)[0]["source"] == "doc.md"


def test_cache_dir_from_environment(local_leaf: Path, tmp_path: Path) -> None:
    # Local folders never touch the cache; the setting still parses from LABALIGN_CACHE_DIR.
    result = runner.invoke(app, ["chunk", str(local_leaf)], env={"LABALIGN_CACHE_DIR": str(tmp_path / "c")})
    assert result.exit_code == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("seed_examples: []\n", "no document block"),
        ("document: [1, 2]\n", "must be a mapping"),
        ("document:\n  repo: docs\n  commit: 1234567\n  patterns: ['*.md']\n", "commit must be text"),
        ("document:\n  repo: docs\n  patterns: '*.md'\n  commit: ''\n", "does not exist"),
        ("document: {repo: docs, commit: '', patterns: [1]}\n", "list of paths"),
        ("document: {repo: [docs\n", "invalid YAML"),
    ],
)
def test_leaf_problems_raise_document_error(tmp_path: Path, content: str, message: str) -> None:
    folder = leaf(tmp_path, content)
    result = runner.invoke(app, ["chunk", str(folder)])
    assert result.exit_code != 0
    assert isinstance(result.exception, DocumentError), result.output
    assert message in str(result.exception)


def test_missing_leaf(tmp_path: Path) -> None:
    result = runner.invoke(app, ["chunk", str(tmp_path / "nowhere")])
    assert isinstance(result.exception, DocumentError)
    assert "no knowledge leaf" in str(result.exception)


def test_tokenizer_option_error(local_leaf: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["chunk", str(local_leaf), "--tokenizer", str(tmp_path / "nope.json")])
    assert isinstance(result.exception, DocumentError)
    assert "tokenizer not found" in str(result.exception)


def test_help_has_examples() -> None:
    for args in (["--help"], ["chunk", "--help"]):
        result = runner.invoke(app, args, env={"COLUMNS": "200"})
        assert result.exit_code == 0 and "Example: labalign documents chunk" in result.output
