"""Every data file the package reads at run time is declared as package data, so a built wheel (not
only an editable install) has it."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def test_non_python_files_are_package_data() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    missing = []
    for path in (SRC / "labalign").rglob("*"):
        if not path.is_file() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
            continue
        covered = False
        for package, patterns in declared.items():
            base = SRC / Path(*package.split("."))
            if base in path.parents:
                rel = path.relative_to(base).as_posix()
                covered = covered or any(fnmatch.fnmatch(rel, p) for p in patterns)
        if not covered:
            missing.append(path.relative_to(SRC).as_posix())
    assert missing == [], f"add to [tool.setuptools.package-data] in pyproject.toml: {missing}"
