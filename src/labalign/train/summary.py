"""What training leaves behind, as typed records: each phase's done.json (PhaseResult) and the run's
summary.json (TrainResult). No torch here: the report and the CLI read them without loading a model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from labalign.errors import LabalignError, first_problem

SUMMARY_FILE = "summary.json"


class PhaseResult(BaseModel):
    """One phase's outcome, as train/PHASE/done.json and summary.json hold it."""

    model_config = ConfigDict(extra="forbid")

    phase: str
    steps: int
    samples: int  # samples seen (epochs x training samples)
    tokens: int  # tokens seen
    seconds: float
    best_step: int
    best_dir: str
    heldout_loss: float | None  # of the best checkpoint
    score: float | None  # evaluator score of the best checkpoint
    train_samples: int
    heldout_samples: int
    data: dict[str, int] = Field(default_factory=dict)
    general_ratio: float | None = None  # the best checkpoint's general-text perplexity / the base's
    candidates: list[dict[str, Any]] = Field(default_factory=list)  # every checkpoint and its scores

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump()


class TrainResult(BaseModel):
    """What training wrote: summary.json is this model (less its own path)."""

    model_config = ConfigDict(extra="forbid")

    out: Path
    final: Path
    phases: list[PhaseResult]
    log: Path
    plot: Path
    summary: Path
    interpolation: float = 1.0  # final/ = base + interpolation * (tuned - base)
    # interpolation auto: every weight tried, with its held-out general perplexity ratio
    interpolation_candidates: list[dict[str, float]] = Field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"summary"})

    @classmethod
    def load(cls, out: Path) -> TrainResult:
        """The result summary.json in `out` records (a one-line error when it is missing or damaged)."""
        path = out / SUMMARY_FILE
        try:
            return cls.model_validate({**json.loads(path.read_text(encoding="utf-8")), "summary": str(path)})
        except (OSError, json.JSONDecodeError, ValidationError) as exc:
            raise LabalignError(f"no readable training summary ({first_problem(exc)})", path=path) from exc


def load_phase(path: Path) -> PhaseResult:
    """A phase's done.json."""
    try:
        return PhaseResult.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValidationError) as exc:
        raise LabalignError(f"no readable phase record ({first_problem(exc)})", path=path) from exc
