"""Prompt templates (Jinja2, sandboxed): shipped in the package, or next to a user's pipeline file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import ChoiceLoader, FileSystemLoader, StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from labalign.errors import LabalignError

PACKAGE_PROMPTS = Path(__file__).parent / "prompts"


class PromptLibrary:
    """Renders templates by file name; user folders are searched before the shipped prompts."""

    def __init__(self, extra_dirs: list[Path] | None = None) -> None:
        loaders = [FileSystemLoader(str(d)) for d in (extra_dirs or [])]
        loaders.append(FileSystemLoader(str(PACKAGE_PROMPTS)))
        # Sandboxed: a pipeline may come from someone else's repository.
        self.env = SandboxedEnvironment(
            loader=ChoiceLoader(loaders),
            undefined=StrictUndefined,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )

    def check(self, name: str) -> None:
        try:
            self.env.get_template(name)
        except TemplateError as exc:
            raise LabalignError(
                f"prompt template {name!r}: {exc}", hint="check the pipeline's prompt names"
            ) from exc

    def render(self, name: str, row: dict[str, Any]) -> str:
        try:
            return self.env.get_template(name).render(**row)
        except TemplateError as exc:
            raise LabalignError(
                f"prompt template {name!r} cannot be rendered: {exc}",
                hint="a template may only use the row's columns",
            ) from exc
