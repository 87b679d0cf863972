"""Turning a leaf's `document` block into the list of files on disk."""

from __future__ import annotations

import stat
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from labalign.documents.fetch import GitCache
from labalign.documents.patterns import expand
from labalign.documents.security import (
    RepoKind,
    check_commit,
    check_patterns,
    classify_repo,
    is_within,
    redact,
)
from labalign.documents.source import DocumentFile, DocumentSource
from labalign.errors import DocumentError

DEFAULT_MAX_FILE_BYTES = 50 * 2**20


def resolve_documents(
    source: DocumentSource,
    *,
    base_dir: Path,
    cache_dir: Path,
    allowed_roots: Sequence[Path],
    offline: bool = False,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> list[DocumentFile] | None:
    """Find the document files of a knowledge leaf, fetching a git repository if needed.

    - A `repo` that is a URL (``https://``, ``ssh://``, ``user@host:path``, ``file://``) is a git
      repository: the exact `commit` (full or abbreviated sha) is fetched into
      ``cache_dir/documents/`` once and its files are matched there; a cached commit needs no network.
    - Any other `repo` is a local folder, absolute or relative to `base_dir` (the leaf's folder). It is
      read as it is on disk (its working tree): `commit` is not checked, and `DocumentFile.commit`
      is None.
    - `allowed_roots`: a local folder, and the path of a ``file://`` repository, must lie inside one of
      these folders (the taxonomy root first, then what the user allowed) once every symbolic link is
      followed: a taxonomy is often someone else's pull request, and its documents go to the teacher
      (possibly remote) and into training, so it may not point at the machine's other files.
    - `offline`: a git repository whose commit is not cached yet is skipped (returns None).

    Each pattern must match at least one file. Matched folders are skipped; a file (or link) that
    resolves outside the repository, or is larger than `max_file_bytes`, is an error. Returns the
    files sorted by relative path, without duplicates. Raises DocumentError for every problem.
    """
    patterns = check_patterns(source.patterns)
    kind = classify_repo(source.repo)
    if isinstance(source.commit, str) and source.commit.strip().startswith("-"):
        check_commit(source.commit, repo=source.repo)  # raises: '-' could become a git option
    if kind is RepoKind.LOCAL:
        root = _local_root(source.repo, Path(base_dir))
        _check_allowed(source.repo, root, allowed_roots)
        return _collect(root, patterns, source, commit=None, max_file_bytes=max_file_bytes)
    if source.repo.lower().startswith("file:"):
        _check_allowed(source.repo, Path(unquote(urlsplit(source.repo).path)).resolve(), allowed_roots)
    commit = check_commit(source.commit, repo=source.repo)
    found = GitCache(Path(cache_dir), source.repo).checkout(commit, offline=offline)
    if found is None:
        return None
    tree, full = found
    return _collect(tree.resolve(), patterns, source, commit=full, max_file_bytes=max_file_bytes)


def _local_root(repo: str, base_dir: Path) -> Path:
    path = Path(repo).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        hint = "write a folder path (relative to the qna.yaml folder) or a git URL"
        if ":" in repo and "://" not in repo:
            hint = "for ssh write user@host:org/repo.git (e.g. git@github.com:org/repo.git)"
        raise DocumentError(f"document folder {repo!r} {what} (looked at {path})", hint=hint)
    return path.resolve()


def _check_allowed(repo: str, path: Path, allowed_roots: Sequence[Path]) -> None:
    roots = [Path(r).expanduser().resolve() for r in allowed_roots]
    if any(is_within(root, path) for root in roots):
        return
    inside = roots[0] if roots else None
    raise DocumentError(
        f"document folder {repo!r} is outside the taxonomy"
        + (f" ({inside})" if inside else "")
        + f": it resolves to {path}",
        hint="move the documents inside the taxonomy, use a git URL, or allow that folder with "
        "documents.allowed_roots in labalign.yaml (or --allow-documents DIR)",
    )


def _collect(
    root: Path,
    patterns: list[str],
    source: DocumentSource,
    *,
    commit: str | None,
    max_file_bytes: int,
) -> list[DocumentFile]:
    where = redact(source.repo) + (f" at {commit[:12]}" if commit else "")
    files: dict[str, DocumentFile] = {}
    for pattern, matches in expand(root, patterns).items():
        kept = 0
        for relpath in matches:
            path = root / relpath
            if not is_within(root, path):
                raise DocumentError(
                    f"document {relpath!r} in {where} is a symbolic link that points outside the repository",
                    hint="documents must be files inside the repository; copy the file in instead",
                )
            try:
                info = path.stat()
            except OSError:
                raise DocumentError(
                    f"document {relpath!r} in {where} is a broken symbolic link",
                    hint="fix or remove the link, or change document.patterns",
                ) from None
            if stat.S_ISDIR(info.st_mode):
                continue  # a folder matched by a glob is not a document
            if not stat.S_ISREG(info.st_mode):
                raise DocumentError(
                    f"document {relpath!r} in {where} is not a regular file",
                    hint="change document.patterns to match only files",
                )
            if info.st_size > max_file_bytes:
                raise DocumentError(
                    f"document {relpath!r} in {where} is {_size(info.st_size)}, over the "
                    f"{_size(max_file_bytes)} limit",
                    hint="split the document, or raise the limit (max_file_bytes)",
                )
            kept += 1
            files[relpath] = DocumentFile(path=path, relpath=relpath, repo=source.repo, commit=commit)
        if kept == 0:
            only_folders = bool(matches)
            raise DocumentError(
                f"document pattern {pattern!r} matched "
                + ("only folders" if only_folders else "no file")
                + f" in {where}",
                hint=(
                    f"to take the files inside, write e.g. '{pattern.rstrip('/')}/*.md'"
                    if only_folders
                    else "patterns are relative to the repository root; hidden files need a pattern "
                    "starting with '.'"
                ),
            )
    return [files[k] for k in sorted(files)]


def _size(n: int) -> str:
    if n >= 2**20:
        return f"{n / 2**20:.1f} MiB"
    if n >= 2**10:
        return f"{n / 2**10:.1f} KiB"
    return f"{n} bytes"
