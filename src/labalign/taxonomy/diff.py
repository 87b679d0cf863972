"""Which taxonomy files changed against a git ref (InstructLab's `ilab taxonomy diff`), untracked included."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from labalign.errors import TaxonomyError
from labalign.taxonomy.discover import TaxonomyFile, discover, is_leaf_name, top_folders

EMPTY = "empty"
DEFAULT_BASES = ("origin/main", "main", "HEAD")


@dataclass(frozen=True)
class DiffResult:
    files: list[TaxonomyFile]
    base: str  # the ref compared against, "empty", or "none (not a git repository)"


def _git(root: Path, *args: str) -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=60, check=False
        )
    except FileNotFoundError as exc:
        raise TaxonomyError("git is not installed", hint="install git, or use --base empty") from exc
    except subprocess.TimeoutExpired as exc:
        raise TaxonomyError(f"git {' '.join(args)} timed out", path=root) from exc
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["git failed"])[-1]
        raise TaxonomyError(f"git {args[0]} failed: {last}", path=root)
    return done.stdout


def _is_git(root: Path) -> bool:
    try:
        return _git(root, "rev-parse", "--is-inside-work-tree").strip() == "true"
    except TaxonomyError:
        return False


def _ref_exists(root: Path, ref: str) -> bool:
    try:
        _git(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
        return True
    except TaxonomyError:
        return False


def changed_files(root: Path, base: str | None = None, *, include_foundational: bool = False) -> DiffResult:
    """Taxonomy files added or modified since `base` (default: origin/main, main or HEAD, the first
    that exists), plus untracked ones. `base="empty"` or a folder outside git: every file."""
    root = root.resolve()
    if not root.is_dir():
        raise TaxonomyError("taxonomy root is not a folder", path=root, hint="pass the taxonomy root")
    if base == EMPTY:
        return DiffResult(discover([root], include_foundational=include_foundational), EMPTY)
    if not _is_git(root):
        if base is not None:
            raise TaxonomyError(
                f"cannot compare against '{base}': not a git repository",
                path=root,
                hint="omit --base to list every file, or use --base empty",
            )
        return DiffResult(
            discover([root], include_foundational=include_foundational), "none (not a git repository)"
        )
    if base is None:
        base = next((b for b in DEFAULT_BASES if _ref_exists(root, b)), None)
        if base is None:  # a repository without any commit yet
            return DiffResult(discover([root], include_foundational=include_foundational), EMPTY)
    elif not _ref_exists(root, base):
        raise TaxonomyError(
            f"git ref '{base}' not found", path=root, hint="check --base (a branch, tag or commit)"
        )
    merge_base = _git(root, "merge-base", base, "HEAD").strip()
    # Both listings relative to the taxonomy root (which may be a sub-folder of the repository).
    names = _git(root, "diff", "--relative", "--name-only", "--diff-filter=d", "-z", merge_base).split("\0")
    names += _git(root, "ls-files", "--others", "--exclude-standard", "-z", "--", ".").split("\0")
    tops = set(top_folders(include_foundational))
    files: dict[Path, TaxonomyFile] = {}
    for name in filter(None, names):
        rel = Path(name)
        path = root / rel
        if rel.parts and rel.parts[0] in tops and is_leaf_name(rel.name) and path.is_file():
            files[path] = TaxonomyFile(path, root)
    return DiffResult(sorted(files.values(), key=lambda f: f.relpath), base)
