"""Shared CLI plumbing: settings from the global --config, consoles, output format choice."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from labalign.config import Settings, load_settings

console = Console()
err_console = Console(stderr=True)


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
