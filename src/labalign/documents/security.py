"""Checks on untrusted `document` blocks: repository addresses, commits, patterns and resolved paths.

A taxonomy is often someone else's pull request, so every string in it is treated as hostile: it must
not become a git option, pick a git transport that runs commands (`ext::`), or read files outside
the document repository.
"""

from __future__ import annotations

import enum
import os
import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from labalign.errors import DocumentError

# The transports git may use for document repositories (exported as GIT_ALLOW_PROTOCOL).
ALLOWED_GIT_PROTOCOLS = ("https", "ssh", "file")

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# git's "<transport>::<address>" syntax (ext::, fd::, remote helpers): never allowed.
_TRANSPORT_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*::")
# scp-like ssh address `user@host:path`; the user part is required so that `C:/docs` or `notes:v2`
# stay local paths.
_SCP = re.compile(
    r"^(?P<user>[A-Za-z0-9._~+][A-Za-z0-9._~+-]*)@(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):(?P<path>.+)$"
)
_COMMIT = re.compile(r"^[0-9a-fA-F]{4,40}$")
_MAGIC = re.compile(r"[*?[]")


class RepoKind(enum.Enum):
    """How a `document.repo` string is fetched."""

    LOCAL = "local"  # a folder on disk, read as it is
    GIT = "git"  # a git URL (https, ssh, scp-like or file), fetched into the cache


def redact(repo: str) -> str:
    """The repo string with any password or token in its URL replaced, for messages."""
    match = _SCHEME.match(repo)
    if not match:
        return repo
    try:
        parts = urlsplit(repo)
    except ValueError:
        return repo
    # A lone user name in an https URL is usually a token (https://TOKEN@host/...).
    if parts.password is None and not (parts.username and parts.scheme == "https"):
        return repo
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


def scrub(message: str, repo: str) -> str:
    """`message` (e.g. git's stderr) with any secret from the repo URL masked; old gits echo URLs."""
    if not _SCHEME.match(repo):
        return message
    try:
        parts = urlsplit(repo)
    except ValueError:
        return message
    secrets = [parts.password or ""]
    # In https a lone user name may be a token; a short one ("git") is not, and masking it would
    # garble the message.
    if parts.scheme == "https" and parts.username and len(parts.username) >= 8:
        secrets.append(parts.username)
    for secret in secrets:
        if secret:
            message = message.replace(secret, "***")
    return message


def classify_repo(repo: str) -> RepoKind:
    """Tell a git URL from a local folder, rejecting anything git could misread as an option or command.

    Allowed: ``https://``, ``ssh://``, scp-like ``user@host:path``, ``file:///abs/path`` and plain
    local paths (absolute, or relative to the leaf's folder).
    """
    if not isinstance(repo, str) or not repo.strip():
        raise DocumentError(
            "document.repo is empty", hint="write a git URL (https://...) or a local folder path"
        )
    if repo.startswith("-"):
        raise DocumentError(
            f"document.repo {repo!r} starts with '-'",
            hint="a repository cannot start with '-' (git would read it as an option)",
        )
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in repo) and (
        _SCHEME.match(repo) or _SCP.match(repo)
    ):
        raise DocumentError(
            f"document.repo {redact(repo)!r} contains whitespace or control characters",
            hint="percent-encode them in the URL",
        )
    scheme_match = _SCHEME.match(repo)
    if scheme_match:
        return _check_url(repo, scheme_match.group(1).lower())
    if _TRANSPORT_PREFIX.match(repo):
        raise DocumentError(
            f"document.repo {repo!r} uses a git transport that is not allowed",
            hint="use an https://, ssh:// or file:// URL, git@host:org/repo, or a local folder",
        )
    scp = _SCP.match(repo)
    if scp:
        if scp.group("host").startswith("-") or scp.group("path").startswith("-"):
            raise DocumentError(
                f"document.repo {repo!r} has a host or path starting with '-'",
                hint="ssh would read it as an option",
            )
        return RepoKind.GIT
    if "\x00" in repo:
        raise DocumentError("document.repo contains a NUL character", hint="fix the path")
    return RepoKind.LOCAL


def _check_url(repo: str, scheme: str) -> RepoKind:
    if scheme not in ALLOWED_GIT_PROTOCOLS:
        hint = "use https:// instead" if scheme in ("http", "git") else None
        raise DocumentError(
            f"document.repo {redact(repo)!r} uses the {scheme}:// scheme, which is not allowed",
            hint=hint or "use an https://, ssh:// or file:// URL, git@host:org/repo, or a local folder",
        )
    try:
        parts = urlsplit(repo)
        host = parts.hostname or ""
        user = parts.username or ""
        _ = parts.port  # raises ValueError for a port that is not a number
    except ValueError as exc:
        raise DocumentError(f"document.repo {redact(repo)!r} is not a valid URL: {exc}") from None
    if scheme == "file":
        if parts.netloc:
            raise DocumentError(
                f"document.repo {repo!r} is not an absolute file:// URL",
                hint="write file:///absolute/path/to/repo (three slashes), or just the path",
            )
        if not parts.path:
            raise DocumentError(f"document.repo {repo!r} has no path", hint="write file:///path/to/repo")
        return RepoKind.GIT
    if not host:
        raise DocumentError(
            f"document.repo {redact(repo)!r} has no host name", hint="write scheme://host/path"
        )
    if host.startswith("-") or user.startswith("-"):
        raise DocumentError(
            f"document.repo {redact(repo)!r} has a host or user starting with '-'",
            hint="ssh would read it as an option",
        )
    return RepoKind.GIT


def check_commit(commit: str, *, repo: str) -> str:
    """Validate a git commit id (4 to 40 hex digits) and return it in lower case."""
    if not isinstance(commit, str) or not commit.strip():
        raise DocumentError(
            f"document.commit is missing for {redact(repo)}",
            hint="write the full 40-character sha of the commit that holds the documents",
        )
    commit = commit.strip()
    if commit.startswith("-"):
        raise DocumentError(
            f"document.commit {commit!r} starts with '-'",
            hint="a commit is a hex sha; git would read this as an option",
        )
    if not _COMMIT.match(commit):
        raise DocumentError(
            f"document.commit {commit!r} is not a commit sha",
            hint="write the commit's sha (4 to 40 hex digits; branch and tag names are not accepted "
            "because they move)",
        )
    return commit.lower()


def check_patterns(patterns: tuple[str, ...] | list[str]) -> list[str]:
    """Validate and normalise glob patterns: relative, no `..`, `./` and duplicate slashes removed."""
    if isinstance(patterns, str):
        patterns = (patterns,)
    if not patterns:
        raise DocumentError(
            "document.patterns is empty", hint="list the files to use, e.g. patterns: ['*.md']"
        )
    cleaned: list[str] = []
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern.strip():
            raise DocumentError(
                f"document.patterns has an empty or non-text entry: {pattern!r}",
                hint="each pattern is a path or glob relative to the repository root",
            )
        if "\x00" in pattern:
            raise DocumentError("document.patterns has an entry with a NUL character")
        if pattern.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", pattern):
            raise DocumentError(
                f"document pattern {pattern!r} is an absolute path",
                hint="patterns are relative to the repository root, e.g. 'docs/*.md'",
            )
        parts = re.split(r"[/\\]", pattern)
        if ".." in parts:
            raise DocumentError(
                f"document pattern {pattern!r} contains '..'",
                hint="patterns may not leave the repository; write them relative to its root",
            )
        kept = [p for p in parts if p not in ("", ".")]
        if not kept:
            raise DocumentError(f"document pattern {pattern!r} names no file", hint="e.g. 'docs/*.md'")
        # A trailing slash names a folder, which is never a document; keep it so it matches nothing.
        cleaned.append("/".join(kept) + ("/" if pattern.endswith("/") else ""))
    return cleaned


def has_magic(pattern: str) -> bool:
    """Whether a pattern has glob wildcards (`*`, `?`, `[`)."""
    return _MAGIC.search(pattern) is not None


def is_within(root: Path, path: str | os.PathLike[str]) -> bool:
    """Whether `path`, with every symbolic link followed, lies inside the resolved `root`."""
    real = Path(os.path.realpath(path))
    try:
        real.relative_to(root)
    except ValueError:
        return False
    return True
