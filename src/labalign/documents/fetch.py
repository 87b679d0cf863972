"""Fetching one commit of a document repository into the cache with the `git` binary.

Cache layout, one folder per repository URL::

    <cache_dir>/documents/<sha256(url)[:20]>/
        repo.git/          bare repository; every fetched commit is pinned by refs/labalign/<sha>
        trees/<sha>/       the files of that commit, checked out once and reused

A commit already in ``repo.git`` is never fetched again, and a ``trees/<sha>`` folder is used as it
is, so a cached commit resolves without network (and without the source repository).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from labalign.documents.security import ALLOWED_GIT_PROTOCOLS, redact, scrub
from labalign.errors import DocumentError

NETWORK_TIMEOUT_S = 600.0  # a fetch of a large repository over a slow link
LOCAL_TIMEOUT_S = 300.0  # local operations (rev-parse, checkout of a large tree)

# Variables that would point git at another repository, index or object store than ours.
_REPO_ENV = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_NAMESPACE",
    "GIT_COMMON_DIR",
    "GIT_CEILING_DIRECTORIES",
    "GIT_DISCOVERY_ACROSS_FILESYSTEM",
)


class _GitResult:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr

    @property
    def last_line(self) -> str:
        """The line of stderr that says what went wrong.

        The last line, except that git's first ``fatal:`` line wins: git follows it with generic
        advice ("Please make sure you have the correct access rights / and the repository exists.").
        """
        lines = [line.strip() for line in self.stderr.splitlines() if line.strip()]
        fatal = [line for line in lines if line.startswith("fatal:")]
        if fatal:
            return fatal[0]
        return lines[-1] if lines else f"git exited with status {self.returncode}"


def _git_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _REPO_ENV}
    env["GIT_TERMINAL_PROMPT"] = "0"  # never wait for a password on a terminal
    # Only these transports; in particular never ext:: (runs commands) or fd::.
    env["GIT_ALLOW_PROTOCOL"] = ":".join(ALLOWED_GIT_PROTOCOLS)
    env["LC_ALL"] = "C"  # stable, English messages that we quote in errors
    if extra:
        env.update(extra)
    return env


def run_git(
    args: list[str], *, timeout: float, env: dict[str, str] | None = None, cwd: Path | None = None
) -> _GitResult:
    """Run git with a hardened environment; DocumentError if git is missing or times out.

    git runs in its own session so that ssh has no terminal to prompt on (it fails instead of
    hanging), and on timeout the whole process group (git, ssh, helpers) is killed.
    """
    cmd = ["git", "-c", "protocol.ext.allow=never", "-c", "protocol.fd.allow=never", *args]
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env if env is not None else _git_env(),
            cwd=cwd,
            start_new_session=True,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
    except FileNotFoundError:
        raise DocumentError(
            "git is not installed (needed to fetch document repositories)",
            hint="install git, or point document.repo at a local folder",
        ) from None
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if hasattr(os, "killpg"):
                os.killpg(proc.pid, signal.SIGKILL)
            else:  # no process groups (Windows): at least stop git itself
                proc.kill()
        proc.communicate()
        command = next((a for a in args if not a.startswith("-")), "")
        raise DocumentError(
            f"git {command} took longer than {timeout:.0f}s and was stopped",
            hint="check the network and that the repository is reachable",
        ) from None
    return _GitResult(proc.returncode, stdout, stderr)


class GitCache:
    """The cache of one repository URL."""

    def __init__(self, cache_dir: Path, repo: str) -> None:
        self.repo = repo
        key = hashlib.sha256(repo.encode("utf-8")).hexdigest()[:20]
        self.root = Path(cache_dir).expanduser().resolve() / "documents" / key
        self.git_dir = self.root / "repo.git"
        self.trees = self.root / "trees"

    def _git(self, *args: str, timeout: float = LOCAL_TIMEOUT_S) -> _GitResult:
        # Run from inside the cache, so that no repository around the current folder can lend git
        # its configuration.
        return run_git([f"--git-dir={self.git_dir}", *args], timeout=timeout, cwd=self.root)

    def checkout(self, commit: str, *, offline: bool) -> tuple[Path, str] | None:
        """The folder holding the files of `commit` and its full sha; None if offline and not cached.

        `commit` is a validated (lower-case hex) full or abbreviated sha.
        """
        if len(commit) == 40 and (self.trees / commit).is_dir():
            return self.trees / commit, commit
        full = self._lookup(commit) if (self.git_dir / "HEAD").is_file() else None
        if full is None:
            if offline:
                return None
            self._fetch(commit)
            full = self._lookup(commit)
            if full is None:
                raise DocumentError(
                    f"commit {commit} not found in {redact(self.repo)}",
                    hint="check document.commit; it must be reachable from a branch or tag of the repo "
                    "(or be a full sha the server lets you fetch)",
                )
        tree = self.trees / full
        if not tree.is_dir():
            self._export(full, tree)
        return tree, full

    def _lookup(self, commit: str) -> str | None:
        # `commit` is validated hex, so it cannot be read as an option; rev-parse takes no `--` here
        # because `--` would turn what follows into a path.
        result = self._git("rev-parse", "--verify", f"{commit}^{{commit}}")
        if result.returncode == 0:
            return result.stdout.strip().lower()
        if "ambiguous" in result.stderr:
            raise DocumentError(
                f"abbreviated commit {commit} is ambiguous in {redact(self.repo)}",
                hint="write more digits of the sha (best: all 40)",
            )
        return None

    def _fetch(self, commit: str) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._unwritable(exc) from None
        if not (self.git_dir / "HEAD").is_file():
            init = run_git(
                ["init", "--quiet", "--bare", "--", str(self.git_dir)], timeout=LOCAL_TIMEOUT_S, cwd=self.root
            )
            if init.returncode != 0:
                raise DocumentError(
                    f"cannot create the document cache at {self.git_dir}: {init.last_line}",
                    hint="check that the cache folder is writable (--cache-dir)",
                )
        if len(commit) == 40:
            # Most servers (GitHub, GitLab, git >= 2.x over protocol v2) let a client fetch one commit
            # by sha, which avoids downloading every branch.
            direct = self._git(
                "fetch",
                "--quiet",
                "--no-tags",
                "--",
                self.repo,
                f"{commit}:refs/labalign/{commit}",
                timeout=NETWORK_TIMEOUT_S,
            )
            if direct.returncode == 0:
                return
        everything = self._git(
            "fetch", "--quiet", "--force", "--",
            self.repo, "+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*",
            timeout=NETWORK_TIMEOUT_S,
        )  # fmt: skip
        if everything.returncode != 0:
            raise DocumentError(
                f"cannot fetch {redact(self.repo)}: {scrub(everything.last_line, self.repo)}",
                hint="check the URL, your network and credentials; use --offline to skip remote documents",
            )
        full = self._lookup(commit)
        if full is not None:
            # Pin the commit so that a later branch deletion or `git gc` cannot drop it.
            self._git("update-ref", f"refs/labalign/{full}", full)

    def _export(self, full: str, tree: Path) -> None:
        """Check the commit's files out into `tree`, atomically (a temp folder renamed at the end)."""
        try:
            self.trees.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=".export-", dir=self.trees))
        except OSError as exc:
            raise self._unwritable(exc) from None
        try:
            files = work / "files"
            files.mkdir()
            # A private index file: several processes may export from the same bare repo at once.
            env = _git_env({"GIT_INDEX_FILE": str(work / "index")})
            for args in (
                ["read-tree", full],
                [f"--work-tree={files}", "checkout-index", "--all", "--force", "--quiet"],
            ):
                result = run_git(
                    [f"--git-dir={self.git_dir}", *args], timeout=LOCAL_TIMEOUT_S, env=env, cwd=self.root
                )
                if result.returncode != 0:
                    raise DocumentError(
                        f"cannot check out commit {full} of {redact(self.repo)}: "
                        f"{scrub(result.last_line, self.repo)}",
                        hint=f"delete the cache folder {self.root} and try again",
                    )
            try:
                files.rename(tree)
            except OSError:
                if not tree.is_dir():  # not a concurrent export that won the race
                    raise
        except OSError as exc:
            raise self._unwritable(exc) from None
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _unwritable(self, exc: OSError) -> DocumentError:
        return DocumentError(
            f"cannot write the document cache at {self.root}: {exc.strerror or exc}",
            hint="check that the cache folder is writable (--cache-dir)",
        )
