"""The one error type that library code raises for bad input; the CLI prints it as one line."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from labalign.redact import redact_text


class LabalignError(Exception):
    """A problem the user can fix: names the file (and line) at fault and what to do."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        column: int | None = None,
        hint: str | None = None,
    ) -> None:
        # Messages often quote a teacher URL; its credentials never reach the terminal or a manifest.
        message = redact_text(message)
        super().__init__(message)
        self.message = message
        self.path = str(path) if path is not None else None
        self.line = line
        self.column = column
        self.hint = redact_text(hint) if hint is not None else None

    def __str__(self) -> str:
        where = ""
        if self.path is not None:
            where = self.path
            if self.line is not None:
                where += f":{self.line}"
                if self.column is not None:
                    where += f":{self.column}"
            where += ": "
        text = f"{where}{self.message}"
        if self.hint:
            text += f" ({self.hint})"
        return text


class ConfigError(LabalignError):
    """Bad settings: a config file, a flag or an environment variable."""


class TaxonomyError(LabalignError):
    """A taxonomy that cannot be read at all (validation problems are reported, not raised)."""


class DocumentError(LabalignError):
    """A knowledge document that cannot be fetched, read or chunked."""


def first_problem(exc: Exception) -> str:
    """A one-line reason for a file that did not read as its model: a validation error's first field and
    message ("phases.0.steps: Field required"), else the error's first line."""
    if isinstance(exc, ValidationError) and exc.errors():
        first = exc.errors()[0]
        return f"{'.'.join(map(str, first['loc']))}: {first['msg']}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
