"""The run directory's manifest.json: what was asked (config, models, profile), what went in (input
hashes, versions), and each stage's status and timing. Written atomically after every change, so a
kill at any moment leaves a manifest that says where to resume."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from labalign.errors import LabalignError
from labalign.redact import redact_text

MANIFEST = "manifest.json"
STAGES = ("validate", "generate", "train", "evaluate", "report")
Stage = Literal["validate", "generate", "train", "evaluate", "report"]
Status = Literal["pending", "running", "done", "interrupted", "failed"]


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class StageRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Status = "pending"
    fingerprint: str | None = None  # of the stage's inputs and settings when it last started
    started: str | None = None
    finished: str | None = None
    seconds: float = 0.0  # wall time over every attempt (a resumed stage adds up)
    attempts: int = 0
    summary: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: int = 1
    created: str = Field(default_factory=now)
    updated: str = Field(default_factory=now)
    command: list[str] = Field(default_factory=list)
    taxonomy: str = ""
    profile: str = "quick"
    models: dict[str, str | None] = Field(default_factory=dict)  # teacher, judge, student
    settings: dict[str, Any] = Field(default_factory=dict)  # the effective settings, as JSON
    inputs: dict[str, str] = Field(default_factory=dict)  # input file -> sha256 (or a git commit)
    versions: dict[str, str] = Field(default_factory=dict)
    stages: dict[str, StageRecord] = Field(default_factory=lambda: {s: StageRecord() for s in STAGES})

    def stage(self, name: str) -> StageRecord:
        return self.stages.setdefault(name, StageRecord())

    def save(self, run_dir: Path) -> None:
        self.updated = now()
        tmp = run_dir / (MANIFEST + ".tmp")
        # Every string is redacted again here, so that no stage summary or error can store a secret.
        tmp.write_text(redact_text(self.model_dump_json(indent=2)) + "\n", encoding="utf-8")
        os.replace(tmp, run_dir / MANIFEST)


def load_manifest(run_dir: Path) -> Manifest | None:
    """The run's manifest, None for a new run directory; a damaged one is a one-line error."""
    path = run_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        return Manifest.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, ValidationError) as exc:
        line = exc.lineno if isinstance(exc, json.JSONDecodeError) else None
        raise LabalignError(
            f"the run manifest is damaged ({str(exc).splitlines()[0]})",
            path=path,
            line=line,
            hint="fix or delete it (outputs stay; the run then redoes every stage, reusing cached answers)",
        ) from exc
