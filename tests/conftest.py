"""Shared test setup: no test touches the user's cache or reads a stray labalign.yaml."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    monkeypatch.setenv("GIT_AUTHOR_NAME", "labalign tests")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "tests@labalign.invalid")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "labalign tests")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "tests@labalign.invalid")
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("HOME", str(home))
    for name in list(os.environ):
        if name.startswith("LABALIGN_"):
            monkeypatch.delenv(name)
    yield


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]
