"""`labalign report RUN`: (re)write a run directory's report.html from what the run has so far."""

from __future__ import annotations

import webbrowser
from pathlib import Path

import typer

from labalign.cli._common import console


def report_command(
    run: Path = typer.Argument(..., help="Run directory (the folder `labalign run` writes, e.g. runs/NAME)."),
    open_browser: bool = typer.Option(False, "--open", help="Open the report in the default web browser."),
) -> None:
    """Write RUN/report.html: stages and timings, leaves, the generation funnel and samples, loss
    curves, evaluation before/after, and how to chat with or serve the tuned model.

    Works on a run that is not finished (unfinished stages say so). The file is self-contained (no
    external assets), so it can be mailed or attached as it is.

    Example: labalign report runs/quick --open
    """
    from labalign.report import render_report  # jinja and the run readers: only when asked

    path = render_report(run)
    console.print(f"report: {path}", soft_wrap=True, highlight=False)
    if open_browser:
        webbrowser.open(path.resolve().as_uri())
