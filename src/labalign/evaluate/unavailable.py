"""The error an evaluation raises when it cannot run here (no judge, no data, offline)."""

from __future__ import annotations

from labalign.errors import LabalignError


class EvalUnavailable(LabalignError):
    """An evaluation that cannot run in this setting: `evaluate all` records it as skipped with this
    message and hint (how to enable it); a single `evaluate <name>` fails with it."""

    def reason(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message
