"""The `labalign` command: thin command groups over the library API."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

from labalign import __version__
from labalign.cli import config as config_cli
from labalign.cli import documents as documents_cli
from labalign.cli import evaluate as evaluate_cli
from labalign.cli import generate as generate_cli
from labalign.cli import model as model_cli
from labalign.cli import report as report_cli
from labalign.cli import run as run_cli
from labalign.cli import serve as serve_cli
from labalign.cli import taxonomy as taxonomy_cli
from labalign.cli import train as train_cli
from labalign.cli._common import CliState, err_console
from labalign.cli._help import conventional_metavars
from labalign.errors import LabalignError

HELP_NAMES = ["-h", "--help"]


class _Group(TyperGroup):
    """Root group: a user error anywhere below prints as one line and exits 1."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        conventional_metavars(self, HELP_NAMES)  # every subcommand is built before the root group

    def invoke(self, ctx: Any) -> Any:  # Any: typer >= 0.29 vendors its own click Context
        try:
            return super().invoke(ctx)
        except LabalignError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True, highlight=False)
            raise typer.Exit(1) from exc


app = typer.Typer(
    cls=_Group,
    name="labalign",
    help="LAB alignment: taxonomy -> synthetic data -> phased training -> evaluation.\n\n"
    "Example: labalign taxonomy validate examples/taxonomy",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": HELP_NAMES},
)
app.add_typer(taxonomy_cli.app)
app.add_typer(documents_cli.app)
app.add_typer(config_cli.app)
app.add_typer(evaluate_cli.app)
app.add_typer(model_cli.app)
generate_cli.register(app)
serve_cli.register(app)
app.command("train")(train_cli.train)
app.command("run")(run_cli.run_command)
app.command("report")(report_cli.report_command)


def _version(value: bool) -> None:
    if value:
        print(f"labalign {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    config: Path = typer.Option(None, "--config", "-c", help="Settings file (default: ./labalign.yaml)."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version."
    ),
) -> None:
    ctx.obj = CliState(config_file=config)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one line and exit 1; nothing prints a traceback unless asked."""
    try:
        app(args=argv, prog_name="labalign")
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # a bug of ours: one line, and the traceback on request
        if os.environ.get("LABALIGN_DEBUG"):
            raise
        err_console.print(
            f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))} "
            "(set LABALIGN_DEBUG=1 for the traceback and please report it)",
            soft_wrap=True,
            highlight=False,
        )
        sys.exit(2)
