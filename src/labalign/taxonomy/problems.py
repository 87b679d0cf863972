"""What validation reports: problems with a position, grouped per file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

Severity = Literal["error", "warning"]


class ProblemRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    line: int
    column: int
    yaml_path: str
    message: str


class FileRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str  # relative to the taxonomy root
    errors: list[ProblemRecord]
    warnings: list[ProblemRecord]


class ValidationRecord(BaseModel):
    """A validation report as written (`labalign run`'s validation.json, `labalign taxonomy validate
    --format json`) and read back (the run report)."""

    model_config = ConfigDict(extra="forbid")

    files: list[FileRecord]
    errors: int


@dataclass(frozen=True)
class Problem:
    """One finding, pointing at the YAML node at fault (1-based line and column)."""

    severity: Severity
    line: int
    column: int
    yaml_path: str
    message: str

    def record(self) -> ProblemRecord:
        return ProblemRecord(
            line=self.line, column=self.column, yaml_path=self.yaml_path, message=self.message
        )


@dataclass
class FileReport:
    """Everything found in one qna.yaml; `relpath` is relative to the taxonomy root."""

    path: Path
    relpath: str
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def add(
        self, severity: Severity, message: str, line: int = 1, column: int = 1, yaml_path: str = "."
    ) -> None:
        self.problems.append(Problem(severity, line, column, yaml_path, message))

    def sort(self) -> None:
        self.problems.sort(key=lambda p: (p.line, p.column, p.severity != "error"))

    def record(self) -> FileRecord:
        return FileRecord(
            path=self.relpath,
            errors=[p.record() for p in self.errors],
            warnings=[p.record() for p in self.warnings],
        )


@dataclass
class ValidationReport:
    """The result of validating a set of taxonomy files."""

    files: list[FileReport] = field(default_factory=list)

    @property
    def error_count(self) -> int:
        return sum(len(f.errors) for f in self.files)

    @property
    def warning_count(self) -> int:
        return sum(len(f.warnings) for f in self.files)

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    def record(self) -> ValidationRecord:
        return ValidationRecord(files=[f.record() for f in self.files], errors=self.error_count)

    def lines(self) -> list[str]:
        """`path:line:column: [yaml.path] message` for every problem, errors marked as such."""
        out = []
        for report in self.files:
            for p in report.problems:
                label = "error" if p.severity == "error" else "warning"
                out.append(f"{report.relpath}:{p.line}:{p.column}: [{p.yaml_path}] {label}: {p.message}")
        return out

    def summary(self) -> str:
        return f"{self.error_count} errors in {len(self.files)} files ({self.warning_count} warnings)"
