"""`labalign config`: write and show settings."""

from __future__ import annotations

from pathlib import Path

import typer

from labalign.cli._common import OutputFormat, console, print_json, settings
from labalign.config import CONFIG_FILE_NAME, commented_defaults, settings_as_yaml
from labalign.errors import ConfigError

app = typer.Typer(name="config", help="Write and inspect labalign settings.", no_args_is_help=True)


@app.command("init")
def init(
    path: Path = typer.Argument(Path(CONFIG_FILE_NAME), help="File to write."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Write a commented settings file with every default.

    Example: labalign config init && labalign config show
    """
    if path.exists() and not force:
        raise ConfigError("file already exists", path=path, hint="use --force to overwrite it")
    path.write_text(commented_defaults(), encoding="utf-8")
    console.print(f"wrote {path}")


@app.command("show")
def show(
    ctx: typer.Context,
    fmt: OutputFormat = typer.Option(OutputFormat.text, "--format", help="text (YAML) or json."),
) -> None:
    """Print the effective settings (file, LABALIGN_* environment and defaults merged).

    Example: LABALIGN_TEACHER__MODEL=http://localhost:8000/v1 labalign config show
    """
    effective = settings(ctx)
    if fmt is OutputFormat.json:
        print_json(effective.model_dump(mode="json"))
    else:
        print(settings_as_yaml(effective), end="")
