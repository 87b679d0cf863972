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
from labalign.documents import DocumentFile, DocumentSource, resolve_documents

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
    state = ctx.find_root().obj
    config_file = state.config_file if isinstance(state, CliState) else None
    return load_settings(config_file, overrides)


def resolve_leaf_documents(source: DocumentSource, base_dir: Path, s: Settings) -> list[DocumentFile] | None:
    """A leaf's document files per the settings (cache, offline, size limit); None: offline + remote."""
    return resolve_documents(
        source,
        base_dir=base_dir,
        cache_dir=s.cache_dir,
        offline=s.taxonomy.offline,
        max_file_bytes=int(s.documents.max_file_mb * 2**20),
    )


def print_json(data: Any) -> None:
    # Plain print: rich would wrap long lines and highlight, which breaks `| jq`.
    print(json.dumps(data, indent=2, ensure_ascii=False))
