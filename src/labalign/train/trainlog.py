"""`training_log.jsonl`: one JSON line per optimizer step ("train") and per evaluation ("eval")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

from labalign.fileio import write_text_atomic


def read_log(path: Path) -> list[dict[str, Any]]:
    """Every complete record (a kill can leave a partial last line, which is skipped)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def truncate_log(path: Path, phase: str, step: int, later_phases: list[str]) -> None:
    """Forget what a killed run logged after the state a resume starts from."""
    records = [
        r
        for r in read_log(path)
        if not ((r.get("phase") == phase and int(r.get("step", 0)) > step) or r.get("phase") in later_phases)
    ]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))


class LogWriter:
    """Appends records and flushes each one, so the log survives a kill up to the last step."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._fh: TextIO | None = None

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("a")
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
