"""yamllint, in-process (InstructLab shells out to the `yamllint` command for the same rules)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from yamllint import linter
from yamllint.config import YamlLintConfig, YamlLintConfigError

from labalign.errors import ConfigError


@dataclass(frozen=True)
class LintProblem:
    line: int
    column: int
    level: str  # yamllint's own level: "error" or "warning"
    rule: str | None
    message: str


@functools.lru_cache(maxsize=8)
def _config(text: str) -> YamlLintConfig:
    try:
        return YamlLintConfig(text)
    except YamlLintConfigError as exc:
        raise ConfigError(
            f"invalid yamllint configuration: {exc}", hint="fix taxonomy.yamllint_config"
        ) from exc


def lint(text: str, config: str) -> list[LintProblem]:
    """All yamllint findings for `text` under `config` (a yamllint YAML config string)."""
    return [LintProblem(p.line, p.column, p.level, p.rule, p.desc) for p in linter.run(text, _config(config))]
