"""Glob matching of `document.patterns` inside a repository or folder.

Semantics follow Python's `glob` with ``recursive=True`` (what InstructLab uses), matched per path
segment: ``*`` and ``?`` never cross ``/``, ``[...]`` is a character class, a ``**`` segment matches
zero or more folders, and wildcards do not match names starting with ``.`` unless the pattern
segment itself starts with ``.``. Unlike `glob`, symbolic links to folders are never descended into
(a link loop cannot hang the walk) and ``.git`` folders are never searched.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from labalign.documents.security import has_magic


class Pattern:
    """One compiled pattern; `matches` takes a posix path relative to the root."""

    def __init__(self, pattern: str) -> None:
        self.text = pattern
        self.literal = not has_magic(pattern)
        self._segments = tuple(pattern.split("/"))
        self._regexes = tuple(
            None if seg == "**" else re.compile(fnmatch.translate(seg)) for seg in self._segments
        )

    def matches(self, relpath: str) -> bool:
        """Whether the relative posix path matches this pattern."""
        names = tuple(relpath.split("/"))
        segments, regexes = self._segments, self._regexes

        @cache
        def match(i: int, j: int) -> bool:
            # i indexes pattern segments, j path names.
            if i == len(segments):
                return j == len(names)
            seg, regex = segments[i], regexes[i]
            if regex is None:
                if i == len(segments) - 1:  # a final `**` matches everything below, at any depth
                    return j < len(names) and not any(n.startswith(".") for n in names[j:])
                # `**` inside a pattern: zero or more non-hidden folders
                if match(i + 1, j):
                    return True
                return j < len(names) - 1 and not names[j].startswith(".") and match(i, j + 1)
            if j == len(names):
                return False
            if names[j].startswith(".") and not seg.startswith("."):
                return False
            return regex.match(names[j]) is not None and match(i + 1, j + 1)

        return match(0, 0)


def walk(root: Path) -> Iterator[str]:
    """Yield the posix relative path of every file and symbolic link under `root`.

    Symbolic links to folders are yielded (so that the caller can report where they point) but not
    entered; ``.git`` folders are skipped.
    """
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = os.path.relpath(dirpath, root)
        prefix = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
        kept: list[str] = []
        for name in dirnames:
            if name == ".git":
                continue
            if os.path.islink(os.path.join(dirpath, name)):
                yield prefix + name
            else:
                kept.append(name)
        dirnames[:] = sorted(kept)
        for name in sorted(filenames):
            yield prefix + name


def expand(root: Path, patterns: list[str]) -> dict[str, list[str]]:
    """Map each pattern to the sorted relative paths it matches under `root` (files, links, folders).

    Literal patterns (no wildcard) are looked up directly; wildcard patterns are matched against one
    walk of the tree, done only if needed.
    """
    compiled = [Pattern(p) for p in patterns]
    found: dict[str, list[str]] = {p.text: [] for p in compiled}
    wildcard = [p for p in compiled if not p.literal]
    for p in compiled:
        if p.literal:
            target = root / p.text.rstrip("/")
            if os.path.lexists(target) and not (p.text.endswith("/") and not target.is_dir()):
                found[p.text].append(p.text.rstrip("/"))
    if wildcard:
        for relpath in walk(root):
            for p in wildcard:
                if p.matches(relpath):
                    found[p.text].append(relpath)
    for p in wildcard:
        # A file literally named like a glob ("[draft] notes.md") is still found by its name.
        if not found[p.text] and os.path.lexists(root / p.text):
            found[p.text].append(p.text)
    return {k: sorted(set(v)) for k, v in found.items()}
