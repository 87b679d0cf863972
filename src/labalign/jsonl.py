"""Reading JSON Lines with errors that name the file, line and column."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from labalign.errors import LabalignError

DEFAULT_HINT = "each line must be one JSON object (JSON Lines)"


def iter_jsonl(path: Path, *, hint: str = DEFAULT_HINT) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for every non-blank line; a bad line raises LabalignError there."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8").rstrip("\r\n")  # else an error at the end points past the line
            except UnicodeDecodeError as exc:
                raise LabalignError(
                    "line is not UTF-8", path=path, line=number, hint="save the file as UTF-8"
                ) from exc
            if not text.strip():
                continue
            try:
                yield number, json.loads(text)
            except json.JSONDecodeError as exc:
                raise LabalignError(
                    f"not valid JSON: {exc.msg}", path=path, line=number, column=exc.colno, hint=hint
                ) from exc


def read_jsonl(path: Path, *, hint: str = DEFAULT_HINT) -> list[Any]:
    return [value for _, value in iter_jsonl(path, hint=hint)]
