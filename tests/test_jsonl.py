"""JSON Lines reading: blank lines skipped, errors at the right line and column."""

from __future__ import annotations

from pathlib import Path

import pytest

from labalign.errors import LabalignError
from labalign.jsonl import iter_jsonl, read_jsonl


def test_values_and_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n\n   \n[2]\n')
    assert list(iter_jsonl(path)) == [(1, {"a": 1}), (4, [2])]
    assert read_jsonl(path) == [{"a": 1}, [2]]


def test_bad_json_and_bad_utf8_point_at_their_line(tmp_path: Path) -> None:
    path = tmp_path / "b.jsonl"
    path.write_text('{"a": 1}\n\n{"b": tru}\n')
    with pytest.raises(LabalignError) as info:
        read_jsonl(path, hint="fix it")
    assert (info.value.line, info.value.column, info.value.hint) == (3, 7, "fix it")
    raw = tmp_path / "c.jsonl"
    raw.write_bytes(b'{"a": 1}\n{"b": "\xff"}\n')
    with pytest.raises(LabalignError, match="not UTF-8") as info:
        read_jsonl(raw)
    assert info.value.line == 2
