"""Resolving `document` blocks: real git repositories in tmp_path (file:// URLs) and local folders."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from labalign.documents import DocumentError, DocumentFile, DocumentSource, resolve_documents
from labalign.documents.fetch import GitCache, _git_env, run_git
from labalign.documents.security import RepoKind, check_commit, classify_repo, redact, scrub

GIT_ENV = {
    "GIT_AUTHOR_NAME": "labalign tests",
    "GIT_AUTHOR_EMAIL": "tests@labalign.invalid",
    "GIT_COMMITTER_NAME": "labalign tests",
    "GIT_COMMITTER_EMAIL": "tests@labalign.invalid",
    "GIT_CONFIG_GLOBAL": os.devnull,  # a developer's gpgsign or hooks must not leak into tests
    "GIT_CONFIG_NOSYSTEM": "1",
}


@pytest.fixture(autouse=True)
def _git_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in GIT_ENV.items():
        monkeypatch.setenv(key, value)


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", *args], cwd=cwd, env={**os.environ, **GIT_ENV}, check=True, capture_output=True, text=True
    )
    return result.stdout.strip()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@dataclass
class Repo:
    path: Path
    first: str  # docs/island.md says "version one"; no docs/extra.md yet
    second: str  # docs/island.md says "version two"; docs/extra.md added

    @property
    def url(self) -> str:
        return self.path.as_uri()


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    path = tmp_path / "source-repo"
    path.mkdir()
    git(path, "init", "-q")
    write(path / "docs" / "island.md", "# Island\n\nversion one\n")
    write(path / "notes.txt", "notes\n")
    first = commit_all(path, "first")
    write(path / "docs" / "island.md", "# Island\n\nversion two\n")
    write(path / "docs" / "extra.md", "# Extra\n")
    second = commit_all(path, "second")
    return Repo(path, first, second)


def resolve(
    source: DocumentSource, tmp_path: Path, *, offline: bool = False, max_file_bytes: int = 2**20
) -> list[DocumentFile] | None:
    return resolve_documents(
        source,
        base_dir=tmp_path,
        cache_dir=tmp_path / "cache",
        allowed_roots=[tmp_path],
        offline=offline,
        max_file_bytes=max_file_bytes,
    )


def files_of(result: list[DocumentFile] | None) -> list[DocumentFile]:
    assert result is not None
    return result


# --- git sources -------------------------------------------------------------------------------


def test_fetches_the_exact_commit_not_head(repo: Repo, tmp_path: Path) -> None:
    files = files_of(resolve(DocumentSource(repo.url, repo.first, ("docs/*.md",)), tmp_path))
    assert [f.relpath for f in files] == ["docs/island.md"]  # extra.md only exists at HEAD
    assert files[0].path.read_text() == "# Island\n\nversion one\n"
    assert files[0].commit == repo.first and files[0].repo == repo.url
    assert files[0].path.is_absolute() and (tmp_path / "cache") in files[0].path.parents

    head = files_of(resolve(DocumentSource(repo.url, repo.second, ("docs/*.md",)), tmp_path))
    assert [f.relpath for f in head] == ["docs/extra.md", "docs/island.md"]
    assert head[1].path.read_text().endswith("version two\n")


def test_abbreviated_and_uppercase_sha(repo: Repo, tmp_path: Path) -> None:
    files = files_of(resolve(DocumentSource(repo.url, repo.first[:7].upper(), ("docs/island.md",)), tmp_path))
    assert files[0].commit == repo.first
    assert "version one" in files[0].path.read_text()


def test_cache_is_reused_without_the_source(repo: Repo, tmp_path: Path) -> None:
    files_of(resolve(DocumentSource(repo.url, repo.second, ("*.txt",)), tmp_path))
    repo.path.rename(tmp_path / "moved-away")  # any fetch would now fail
    again = files_of(resolve(DocumentSource(repo.url, repo.second, ("*.txt",)), tmp_path))
    assert again[0].path.read_text() == "notes\n"
    # The first commit came with the second's history: it resolves (and checks out) from the cache too,
    # also by abbreviated sha.
    older = files_of(resolve(DocumentSource(repo.url, repo.first[:10], ("docs/*.md",)), tmp_path))
    assert "version one" in older[0].path.read_text()
    # A commit the cache lacks needs the (gone) source: an error quoting git's last stderr line.
    with pytest.raises(DocumentError, match=r"cannot fetch") as info:
        resolve(DocumentSource(repo.url, "ab" * 20, ("*.txt",)), tmp_path)
    assert "fatal" in str(info.value) or "does not appear" in str(info.value)


def test_offline_skips_remote_repositories_not_in_cache(repo: Repo, tmp_path: Path) -> None:
    source = DocumentSource(repo.url, repo.first, ("docs/*.md",))
    assert resolve(source, tmp_path, offline=True) is None
    assert not (tmp_path / "cache" / "documents").exists()


def test_offline_resolves_from_cache(repo: Repo, tmp_path: Path) -> None:
    files_of(resolve(DocumentSource(repo.url, repo.second, ("docs/*.md",)), tmp_path))
    cached = files_of(resolve(DocumentSource(repo.url, repo.second, ("docs/*.md",)), tmp_path, offline=True))
    assert [f.relpath for f in cached] == ["docs/extra.md", "docs/island.md"]
    # In the cached repo but never checked out: checked out offline, without the network.
    older = files_of(resolve(DocumentSource(repo.url, repo.first, ("docs/*.md",)), tmp_path, offline=True))
    assert "version one" in older[0].path.read_text()
    # Not in the cache at all: skipped.
    assert resolve(DocumentSource(repo.url, "cd" * 20, ("docs/*.md",)), tmp_path, offline=True) is None


def test_commit_not_found_names_repo_and_commit(repo: Repo, tmp_path: Path) -> None:
    for commit in ("0" * 40, "abcdef1"):
        with pytest.raises(DocumentError) as info:
            resolve(DocumentSource(repo.url, commit, ("*.md",)), tmp_path)
        assert commit in str(info.value) and repo.url in str(info.value) and "not found" in str(info.value)


def test_unreachable_repository(tmp_path: Path) -> None:
    url = (tmp_path / "nowhere").as_uri()
    with pytest.raises(DocumentError, match=r"cannot fetch .*nowhere: .+") as info:
        resolve(DocumentSource(url, "1" * 40, ("*.md",)), tmp_path)
    assert info.value.hint and "--offline" in info.value.hint


def test_commit_pinned_by_a_ref_in_the_cache(repo: Repo, tmp_path: Path) -> None:
    resolve(DocumentSource(repo.url, repo.first[:8], ("*.txt",)), tmp_path)
    cache = GitCache(tmp_path / "cache", repo.url)
    refs = git(cache.git_dir, "for-each-ref", "--format=%(refname)", "refs/labalign/")
    assert f"refs/labalign/{repo.first}" in refs.splitlines()


def test_symlink_in_git_repo_escaping(repo: Repo, tmp_path: Path) -> None:
    secret = write(tmp_path / "secret.md", "do not read\n")
    os.symlink(os.path.relpath(secret, repo.path / "docs"), repo.path / "docs" / "leak.md")
    os.symlink("island.md", repo.path / "docs" / "alias.md")  # inside the repo: fine
    sha = commit_all(repo.path, "links")
    with pytest.raises(DocumentError, match=r"leak.md.*outside the repository"):
        resolve(DocumentSource(repo.url, sha, ("docs/*.md",)), tmp_path)
    files = files_of(resolve(DocumentSource(repo.url, sha, ("docs/alias.md",)), tmp_path))
    assert files[0].path.read_text().endswith("version two\n")


def test_git_missing_is_a_document_error(repo: Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(DocumentError, match=r"git is not installed"):
        resolve(DocumentSource(repo.url, repo.first, ("*.md",)), tmp_path)


def test_git_environment_is_hardened(repo: Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Set by a git hook, say: must not send our git calls to another repository.
    monkeypatch.setenv("GIT_DIR", str(repo.path / ".git"))
    monkeypatch.setenv("GIT_INDEX_FILE", str(tmp_path / "stray-index"))
    files = files_of(resolve(DocumentSource(repo.url, repo.first, ("docs/*.md",)), tmp_path))
    assert "version one" in files[0].path.read_text()
    env = _git_env()
    assert env["GIT_TERMINAL_PROMPT"] == "0"
    assert env["GIT_ALLOW_PROTOCOL"] == "https:ssh:file"
    assert "GIT_DIR" not in env and "GIT_INDEX_FILE" not in env


def test_git_timeout_is_a_document_error() -> None:
    # `git hash-object --stdin` would wait for input forever if stdin were a terminal; here it gets
    # /dev/null and finishes, so use a tiny timeout on a slow command instead: the help of all commands.
    with pytest.raises(DocumentError, match=r"took longer than"):
        run_git(["-c", "alias.slow=!sleep 5", "slow"], timeout=0.2)


# --- local folders -----------------------------------------------------------------------------


def test_local_folder_relative_to_leaf_reads_working_tree(repo: Repo, tmp_path: Path) -> None:
    write(repo.path / "docs" / "island.md", "# Island\n\nuncommitted edit\n")
    leaf_dir = tmp_path / "taxonomy" / "knowledge" / "island"
    leaf_dir.mkdir(parents=True)
    rel = os.path.relpath(repo.path, leaf_dir)
    files = files_of(
        resolve_documents(
            DocumentSource(rel, "whatever-not-checked", ("docs/*.md", "docs/island.md")),
            base_dir=leaf_dir,
            cache_dir=tmp_path / "cache",
            allowed_roots=[tmp_path],
            offline=True,  # local folders resolve offline too
        )
    )
    assert [f.relpath for f in files] == ["docs/extra.md", "docs/island.md"]  # deduplicated, sorted
    assert all(f.commit is None and f.repo == rel for f in files)
    assert files[1].path == repo.path.resolve() / "docs" / "island.md"
    assert "uncommitted edit" in files[1].path.read_text()
    assert not (tmp_path / "cache").exists()


def test_local_folder_absolute_and_missing(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    write(folder / "a.md", "a\n")
    files = files_of(resolve(DocumentSource(str(folder), "", ("a.md",)), tmp_path))
    assert files[0].relpath == "a.md"
    with pytest.raises(DocumentError, match=r"does not exist"):
        resolve(DocumentSource("no-such-folder", "", ("a.md",)), tmp_path)
    with pytest.raises(DocumentError, match=r"is not a folder"):
        resolve(DocumentSource(str(folder / "a.md"), "", ("a.md",)), tmp_path)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    for rel in (
        "top.md",
        "a/one.md",
        "a/b/two.md",
        "a/b/c/three.md",
        "a/b/data.txt",
        "a/.hidden/secret.md",
        ".github/readme.md",
        "q1.md",
        "q2.md",
        "qx.md",
        ".git/HEAD.md",
    ):
        write(root / rel, f"{rel}\n")
    return root


@pytest.mark.parametrize(
    ("patterns", "expected"),
    [
        (("*.md",), ["q1.md", "q2.md", "qx.md", "top.md"]),
        (("**/*.md",), ["a/b/c/three.md", "a/b/two.md", "a/one.md", "q1.md", "q2.md", "qx.md", "top.md"]),
        (("a/**/*.md",), ["a/b/c/three.md", "a/b/two.md", "a/one.md"]),
        (("a/**",), ["a/b/c/three.md", "a/b/data.txt", "a/b/two.md", "a/one.md"]),
        (("q?.md",), ["q1.md", "q2.md", "qx.md"]),
        (("q[0-9].md",), ["q1.md", "q2.md"]),
        (("q[!0-9].md",), ["qx.md"]),
        (("a/*/two.md", "./a//b/two.md"), ["a/b/two.md"]),
        (("a/.hidden/*.md", ".github/*"), [".github/readme.md", "a/.hidden/secret.md"]),
    ],
)
def test_glob_semantics(tree: Path, tmp_path: Path, patterns: tuple[str, ...], expected: list[str]) -> None:
    files = files_of(resolve(DocumentSource(str(tree), "", patterns), tmp_path))
    assert [f.relpath for f in files] == expected


def test_pattern_matching_nothing_is_named(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(DocumentError, match=r"'docs/\*\.pdf' matched no file"):
        resolve(DocumentSource(str(tree), "", ("*.md", "docs/*.pdf")), tmp_path)


def test_folders_are_skipped(tree: Path, tmp_path: Path) -> None:
    files = files_of(resolve(DocumentSource(str(tree), "", ("a/*",)), tmp_path))
    assert [f.relpath for f in files] == ["a/one.md"]  # a/b is a folder
    with pytest.raises(DocumentError, match=r"matched only folders") as info:
        resolve(DocumentSource(str(tree), "", ("a/b",)), tmp_path)
    assert info.value.hint and "a/b/*.md" in info.value.hint


@pytest.mark.parametrize(
    "pattern",
    ["../outside.md", "a/../../outside.md", "..", "/etc/passwd", "\\windows\\x.md", "C:/x.md", "a\\..\\b"],
)
def test_patterns_cannot_leave_the_repository(tree: Path, tmp_path: Path, pattern: str) -> None:
    write(tmp_path / "outside.md", "outside\n")
    with pytest.raises(DocumentError, match=r"absolute path|contains '\.\.'"):
        resolve(DocumentSource(str(tree), "", (pattern,)), tmp_path)


@pytest.mark.parametrize("patterns", [(), ("",), ("  ",), ("./",)])
def test_empty_patterns(tree: Path, tmp_path: Path, patterns: tuple[str, ...]) -> None:
    with pytest.raises(DocumentError, match=r"patterns|names no file"):
        resolve(DocumentSource(str(tree), "", patterns), tmp_path)


def test_symlinks_escaping_a_local_folder(tree: Path, tmp_path: Path) -> None:
    outside = write(tmp_path / "outside" / "secret.md", "secret\n")
    link = tree / "a" / "abs-link.md"
    os.symlink(outside, link)
    with pytest.raises(DocumentError, match=r"abs-link.md.*outside the repository"):
        resolve(DocumentSource(str(tree), "", ("a/*.md",)), tmp_path)
    link.unlink()
    # A linked folder is never entered by a glob (no escape, no link loops) ...
    os.symlink(outside.parent, tree / "linkdir")
    os.symlink(tree, tree / "a" / "loop")
    files = files_of(resolve(DocumentSource(str(tree), "", ("**/*.md",)), tmp_path))
    assert not any("secret" in f.relpath or "loop" in f.relpath for f in files)
    # ... and a literal path through it is caught as escaping.
    with pytest.raises(DocumentError, match=r"outside the repository"):
        resolve(DocumentSource(str(tree), "", ("linkdir/secret.md",)), tmp_path)
    # A broken link is reported as such.
    os.symlink(tree / "missing.md", tree / "broken.md")
    with pytest.raises(DocumentError, match=r"broken symbolic link"):
        resolve(DocumentSource(str(tree), "", ("broken.md",)), tmp_path)


def test_file_size_limit(tree: Path, tmp_path: Path) -> None:
    write(tree / "big.md", "x" * 5000)
    with pytest.raises(DocumentError) as info:
        resolve(DocumentSource(str(tree), "", ("big.md",)), tmp_path, max_file_bytes=4096)
    assert "big.md" in str(info.value) and "4.0 KiB limit" in str(info.value)
    files = files_of(resolve(DocumentSource(str(tree), "", ("big.md",)), tmp_path, max_file_bytes=5000))
    assert files[0].relpath == "big.md"


def test_fifo_is_not_a_document(tree: Path, tmp_path: Path) -> None:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    os.mkfifo(tree / "pipe.md")
    with pytest.raises(DocumentError, match=r"not a regular file"):
        resolve(DocumentSource(str(tree), "", ("pipe.md",)), tmp_path)


# --- hostile repo and commit strings -----------------------------------------------------------


@pytest.mark.parametrize(
    "repo_string",
    [
        "ext::sh -c touch% {marker}",
        "ext::sh -c 'touch {marker}'",
        "fd::17",
        "transport::whatever",
        "--upload-pack=touch {marker}",
        "-oProxyCommand=touch {marker}",
        "ssh://-oProxyCommand=touch%20{marker}/repo",
        "git@example.com:--upload-pack=x",
        "git@-oProxyCommand=x:repo",
        "http://example.com/repo.git",
        "git://example.com/repo.git",
        "ftp://example.com/repo.git",
        "file://host/path/repo",
        "https:///no-host",
        "https://exa mple.com/repo.git",
        "https://token@example.com:notaport/repo.git",
        "ssh://git@example.com:org/repo.git",
    ],
)
def test_hostile_repos_are_rejected_before_git_runs(repo_string: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(DocumentError):
        resolve(DocumentSource(repo_string.format(marker=marker), "a" * 40, ("*.md",)), tmp_path)
    assert not marker.exists()
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("commit", ["-n", "--upload-pack=x", "main", "HEAD~1", "abc", "g" * 40, "a" * 41, ""])
def test_bad_commits_are_rejected(repo: Repo, tmp_path: Path, commit: str) -> None:
    with pytest.raises(DocumentError, match=r"commit"):
        resolve(DocumentSource(repo.url, commit, ("*.md",)), tmp_path)
    assert not (tmp_path / "cache").exists()


def test_dash_commit_rejected_for_local_folders_too(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(DocumentError, match=r"starts with '-'"):
        resolve(DocumentSource(str(tree), "--force", ("top.md",)), tmp_path)


@pytest.mark.parametrize(
    ("repo_string", "kind"),
    [
        ("https://github.com/org/repo.git", RepoKind.GIT),
        ("HTTPS://github.com/org/repo", RepoKind.GIT),
        ("ssh://git@github.com:22/org/repo.git", RepoKind.GIT),
        ("git@github.com:org/repo.git", RepoKind.GIT),
        ("file:///srv/repos/docs", RepoKind.GIT),
        ("docs", RepoKind.LOCAL),
        ("../shared/docs", RepoKind.LOCAL),
        ("/abs/docs", RepoKind.LOCAL),
        ("C:/docs", RepoKind.LOCAL),
        ("my docs:v2", RepoKind.LOCAL),
    ],
)
def test_repo_classification(repo_string: str, kind: RepoKind) -> None:
    assert classify_repo(repo_string) is kind


def test_commit_normalised() -> None:
    assert check_commit(" ABCDEF1 ", repo="r") == "abcdef1"


def test_credentials_are_redacted() -> None:
    assert redact("https://user:s3cret@example.com/r.git") == "https://***@example.com/r.git"
    assert redact("https://ghp_token@example.com/r.git") == "https://***@example.com/r.git"
    assert redact("ssh://git@example.com/r.git") == "ssh://git@example.com/r.git"
    assert redact("https://t0ken@example.com:8443/r.git") == "https://***@example.com:8443/r.git"
    assert redact("https://t0ken@example.com:bad/r.git") == "https://***@example.com:bad/r.git"
    assert (
        scrub("fatal: git failed for https://git@x/", "https://git@x/")
        == "fatal: git failed for https://git@x/"
    )
    assert (
        scrub("fatal: 'https://u:s3cret@x/' failed", "https://u:s3cret@x/")
        == "fatal: 'https://u:***@x/' failed"
    )


def test_unreachable_https_with_token_does_not_leak(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Port 1 on localhost refuses at once: no real network is used (nor a proxy from the environment).
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "*")
    url = "https://user:s3cret-token@127.0.0.1:1/org/repo.git"
    with pytest.raises(DocumentError) as info:
        resolve(DocumentSource(url, "a" * 40, ("*.md",)), tmp_path)
    assert "s3cret-token" not in str(info.value)
    assert "cannot fetch" in str(info.value)


def test_unwritable_cache_is_a_document_error(repo: Repo, tmp_path: Path) -> None:
    blocker = write(tmp_path / "not-a-folder", "a file where the cache folder should be\n")
    with pytest.raises(DocumentError, match=r"cannot write the document cache") as info:
        resolve_documents(
            DocumentSource(repo.url, repo.first, ("*.txt",)),
            base_dir=tmp_path,
            cache_dir=blocker / "cache",
            allowed_roots=[tmp_path],
        )
    assert info.value.hint and "--cache-dir" in info.value.hint


def test_file_named_like_a_glob_is_found_by_name(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    write(folder / "[draft] notes.md", "draft\n")
    files = files_of(resolve(DocumentSource(str(folder), "", ("[draft] notes.md",)), tmp_path))
    assert [f.relpath for f in files] == ["[draft] notes.md"]
