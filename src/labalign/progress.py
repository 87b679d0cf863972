"""One rich progress display for work reported as (phase, done, total) callbacks: a bar per phase
with counts and ETA. Evaluation and `labalign run` both report progress this way."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

ProgressCallback = Callable[[str, int, int], None]  # (phase, done, total): the one progress callback type


@contextmanager
def phase_progress(console: Console, *, transient: bool = True) -> Iterator[ProgressCallback]:
    """Yields the callback; a phase gets its bar the first time it reports."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
    ) as progress:
        tasks: dict[str, TaskID] = {}

        def on_progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = progress.add_task(phase, total=total)
            progress.update(tasks[phase], completed=done, total=total)

        yield on_progress
