"""Finding taxonomy files: from a root folder, a sub-folder, or a list of files."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from labalign.errors import TaxonomyError

LEAF_FILE = "qna.yaml"
SKILL_FOLDERS = ("compositional_skills",)
KNOWLEDGE_FOLDERS = ("knowledge",)
FOUNDATIONAL_FOLDERS = ("foundational_skills",)
# Names a user may mean as a leaf file; reported as misnamed rather than silently skipped.
_NEAR_MISSES = {"qna.yml", "qna.yaml"}


@dataclass(frozen=True)
class TaxonomyFile:
    """A file to examine: its absolute path, its taxonomy root and its path relative to that root."""

    path: Path
    root: Path

    @property
    def relpath(self) -> str:
        try:
            return self.path.relative_to(self.root).as_posix()
        except ValueError:
            return self.path.as_posix()

    @property
    def taxonomy_parts(self) -> tuple[str, ...]:
        """Path parts from the top taxonomy folder down (e.g. ('knowledge', 'history', 'qna.yaml'))."""
        parts = Path(self.relpath).parts
        return tuple(parts)

    @property
    def leaf_name(self) -> str:
        """The leaf's identity: its folder relative to the root, as InstructLab names leaves."""
        return Path(self.relpath).parent.as_posix()


def top_folders(include_foundational: bool) -> tuple[str, ...]:
    return SKILL_FOLDERS + KNOWLEDGE_FOLDERS + (FOUNDATIONAL_FOLDERS if include_foundational else ())


def find_root(path: Path, include_foundational: bool = True) -> Path:
    """The taxonomy root above `path`: the parent of its deepest top-level taxonomy folder."""
    path = path.resolve()
    names = top_folders(include_foundational)
    parts = path.parts
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] in names:
            return Path(*parts[:i]) if i > 0 else Path(path.anchor)
    return path if path.is_dir() else path.parent


def is_leaf_name(name: str) -> bool:
    return name.lower() in _NEAR_MISSES


def discover(paths: Iterable[Path], *, include_foundational: bool = False) -> list[TaxonomyFile]:
    """Every taxonomy file under the given roots, folders or files, sorted and without repeats."""
    found: dict[Path, TaxonomyFile] = {}
    for given in paths:
        if not given.exists():
            raise TaxonomyError("no such file or folder", path=given, hint="check the path")
        if given.is_file():
            resolved = given.resolve()
            found.setdefault(resolved, TaxonomyFile(resolved, find_root(resolved)))
            continue
        root = given.resolve()
        tops = [root / t for t in top_folders(include_foundational) if (root / t).is_dir()]
        if tops:
            search, file_root = tops, root
        else:
            # A sub-folder of a taxonomy (or a loose folder of leaves): everything under it.
            search, file_root = [root], find_root(root, include_foundational)
            skipped = set(FOUNDATIONAL_FOLDERS) if not include_foundational else set()
            if skipped & set(root.relative_to(file_root).parts if root != file_root else ()):
                continue
        for folder in search:
            for candidate in sorted(folder.rglob("*")):
                if is_leaf_name(candidate.name) and candidate.is_dir() and not _hidden(candidate, folder):
                    # Skipping it would drop a leaf without a word.
                    raise TaxonomyError(
                        f"{candidate.name} is a folder, not a file",
                        path=candidate,
                        hint="a leaf is a qna.yaml file; rename or remove the folder",
                    )
                if candidate.is_file() and is_leaf_name(candidate.name) and not _hidden(candidate, folder):
                    resolved = candidate.resolve()
                    found.setdefault(resolved, TaxonomyFile(resolved, file_root))
    return sorted(found.values(), key=lambda f: (f.root.as_posix(), f.relpath))


def require_files(files: list[TaxonomyFile], paths: Iterable[Path]) -> list[TaxonomyFile]:
    """`files`, or a one-line error when there are none: an empty taxonomy is a mistake (a wrong
    path, say), found before any model loads."""
    if not files:
        where = ", ".join(str(p) for p in paths) or "."
        raise TaxonomyError(
            f"no leaves (qna.yaml files) under {where}",
            hint="give the taxonomy root (the folder that holds compositional_skills/ and knowledge/), "
            "a folder below it, or qna.yaml files",
        )
    return files


def _hidden(path: Path, base: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(base).parts)
