"""The run directory's manifest.json: what was asked (config, models, profile), what went in (input
hashes, versions), and each stage's status and timing. Written atomically after every change, so a
kill at any moment leaves a manifest that says where to resume."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from labalign.errors import LabalignError
from labalign.fileio import write_text_atomic
from labalign.redact import redact_text

MANIFEST = "manifest.json"
STAGES = ("validate", "generate", "train", "evaluate", "report")
Stage = Literal["validate", "generate", "train", "evaluate", "report"]
Status = Literal["pending", "running", "done", "interrupted", "failed"]


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class _Summary(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LeafEntry(_Summary):
    name: str
    kind: str
    seed_examples: int
    document: str | None = None  # the knowledge document's repository


class ValidateSummary(_Summary):
    leaves: list[LeafEntry]
    files: int
    errors: int
    warnings: int


class LeafKept(_Summary):
    kept: int
    heldout: int


class GenerateSummary(_Summary):
    phase1_records: int
    phase2_records: int
    teacher_calls: int
    leaves: dict[str, LeafKept]


class PhaseBrief(_Summary):
    phase: str
    steps: int
    samples: int
    tokens: int
    seconds: float
    heldout_loss: float | None = None
    best_step: int | None = None
    general_ratio: float | None = None


class GeneralReplayInfo(BaseModel):
    """Where the general replay came from and, when the base wrote it, the generation's counts."""

    model_config = ConfigDict(extra="ignore")  # older manifests also kept the cache's error count

    source: str
    records: int | None = None
    failed: int | None = None
    hits: int | None = None  # answers from the request cache
    misses: int | None = None  # answers the model wrote
    shipped: bool | None = None  # the text shipped with labalign for this student (no request)


class TrainSummary(_Summary):
    final: str
    phases: list[PhaseBrief]
    general_replay: GeneralReplayInfo | None = None


class EvaluateSummary(_Summary):
    evaluations: list[str]
    skipped: dict[str, str]  # evaluation -> why it could not run
    regressions: list[str]  # what got worse beyond noise, in words

    @field_validator("regressions", mode="before")
    @classmethod
    def _messages(cls, value: Any) -> Any:
        # Manifests before 2026-12 kept each regression's figures; the message says it all.
        if isinstance(value, list):
            return [v.get("message", "") if isinstance(v, dict) else v for v in value]
        return value


class GgufExport(_Summary):
    path: str
    quant: str
    bytes: int


class ReportSummary(_Summary):
    report: str
    gguf: GgufExport | None = None


StageSummary = ValidateSummary | GenerateSummary | TrainSummary | EvaluateSummary | ReportSummary


class StageRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Status = "pending"
    fingerprint: str | None = None  # of the stage's inputs and settings when it last started
    started: str | None = None
    finished: str | None = None
    seconds: float = 0.0  # wall time over every attempt (a resumed stage adds up)
    attempts: int = 0
    summary: StageSummary | None = None  # what the stage produced, once it is done
    error: str | None = None

    @field_validator("summary", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == {} else value  # older manifests wrote {} for "nothing yet"


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
        # Every string is redacted again here, so that no stage summary or error can store a secret.
        write_text_atomic(run_dir / MANIFEST, redact_text(self.model_dump_json(indent=2)) + "\n")


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
