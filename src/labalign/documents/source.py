"""The `document` block of a knowledge leaf, and the files it resolves to."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from labalign.errors import DocumentError


@dataclass(frozen=True)
class DocumentSource:
    """Where a knowledge leaf's documents live: ``document: {repo, commit, patterns}`` in qna.yaml."""

    repo: str
    commit: str
    patterns: tuple[str, ...]

    @classmethod
    def from_mapping(cls, data: object, *, path: str | Path | None = None) -> DocumentSource:
        """Build from the parsed `document` mapping of a qna.yaml; `path` is named in errors."""
        if not isinstance(data, Mapping):
            raise DocumentError(
                "document must be a mapping with repo, commit and patterns",
                path=path,
                hint="write document: {repo: ..., commit: ..., patterns: [...]}",
            )
        repo = data.get("repo")
        commit = data.get("commit")
        patterns = data.get("patterns")
        if not isinstance(repo, str) or not repo.strip():
            raise DocumentError(
                "document.repo is missing or not text",
                path=path,
                hint="write a git URL (https://...) or a local folder path",
            )
        if commit is None:
            commit = ""
        if not isinstance(commit, str):
            raise DocumentError(
                f"document.commit must be text, got {type(commit).__name__} {commit!r}",
                path=path,
                hint="quote the sha so YAML keeps it as text: commit: '0123abcd...'",
            )
        if isinstance(patterns, str):
            patterns = [patterns]
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise DocumentError(
                "document.patterns must be a list of paths or globs",
                path=path,
                hint="e.g. patterns: ['*.md']",
            )
        return cls(repo=repo.strip(), commit=commit.strip(), patterns=tuple(patterns))


@dataclass(frozen=True)
class DocumentFile:
    """One document file found for a source."""

    path: Path  # absolute path on disk (in the cache checkout or the local folder)
    relpath: str  # posix path relative to the repository/folder root
    repo: str  # as written in the leaf
    commit: str | None  # resolved full sha for git sources, None for a plain local folder
