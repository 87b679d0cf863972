"""Shared CLI plumbing: settings from the global --config, consoles, output format choice."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from labalign.config import Settings, load_settings
from labalign.errors import LabalignError

console = Console()
err_console = Console(stderr=True)


# Knowledge documents on this machine outside the taxonomy are refused unless allowed (a taxonomy is
# often someone else's pull request); the flag adds to the documents.allowed_roots setting.
AllowDocuments = Annotated[
    list[Path] | None,
    typer.Option(
        "--allow-documents",
        metavar="DIR",
        help="Also let knowledge leaves read local documents under DIR (repeatable; setting "
        "documents.allowed_roots). By default only the taxonomy's own folder is read.",
    ),
]


def allowed_roots_override(ctx: typer.Context, extra: list[Path] | None) -> list[Path] | None:
    """documents.allowed_roots with the --allow-documents folders added (None: flag not given)."""
    if not extra:
        return None
    return [*settings(ctx).documents.allowed_roots, *extra]


# One convention in every command that reads a taxonomy: its root is the first positional argument;
# `-t/--taxonomy` stays as an alias so that older scripts keep working.
TaxonomyArg = Annotated[
    Path | None,
    typer.Argument(
        metavar="TAXONOMY",
        show_default=False,
        help="Taxonomy root (holds compositional_skills/, knowledge/); default: setting taxonomy.path.",
    ),
]
TaxonomyAlias = Annotated[
    Path | None,
    typer.Option(
        "--taxonomy", "-t", metavar="PATH", help="The taxonomy root, as an option (same as TAXONOMY)."
    ),
]


def pick_taxonomy(argument: Path | None, alias: Path | None) -> Path | None:
    """The taxonomy given as the positional argument or as -t (None: neither, use the setting)."""
    if argument is not None and alias is not None and argument.resolve() != alias.resolve():
        raise LabalignError(
            f"two taxonomies given: {argument} and -t {alias}", hint="give the taxonomy once, as TAXONOMY"
        )
    return argument if argument is not None else alias


def taxonomy_and_leaf(words: list[str], alias: Path | None) -> tuple[Path | None, str]:
    """`[TAXONOMY] LEAF` positionals: one word is the leaf, two are the taxonomy root and the leaf."""
    if len(words) == 1:
        return alias, words[0]
    if len(words) == 2:
        return pick_taxonomy(Path(words[0]), alias), words[1]
    raise LabalignError(
        f"expected [TAXONOMY] LEAF, got {len(words)} arguments",
        hint="e.g. examples/taxonomy knowledge/history/quillmarrow_island",
    )


class OutputFormat(StrEnum):
    text = "text"
    json = "json"


@dataclass
class CliState:
    config_file: Path | None = None


def settings(ctx: typer.Context, **overrides: Any) -> Settings:
    """Effective settings: --config file (or ./labalign.yaml), env, then these flag values."""
    return layered_settings(ctx, None, overrides)


def layered_settings(
    ctx: typer.Context, defaults: dict[str, Any] | None, overrides: dict[str, Any]
) -> Settings:
    """Effective settings: `defaults` (a run profile), --config file, env, then `overrides` (flags)."""
    state = ctx.find_root().obj
    config_file = state.config_file if isinstance(state, CliState) else None
    return load_settings(config_file, overrides, defaults)


def print_json(data: Any) -> None:
    # Plain print: rich would wrap long lines and highlight, which breaks `| jq`.
    print(json.dumps(data, indent=2, ensure_ascii=False))
