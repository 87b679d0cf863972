"""`labalign run`: taxonomy to evaluated, servable model in one resumable command."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from labalign.cli._common import (
    AllowDocuments,
    allowed_roots_override,
    console,
    err_console,
    layered_settings,
)
from labalign.manifest import (
    STAGES,
    EvaluateSummary,
    GenerateSummary,
    Manifest,
    ReportSummary,
    StageSummary,
    TrainSummary,
    ValidateSummary,
)
from labalign.redact import redact_text
from labalign.run.profiles import PROFILES, get_profile


def _seconds(value: float) -> str:
    minutes, seconds = divmod(round(value), 60)
    return f"{minutes}:{seconds:02d}"


def _summary_line(summary: StageSummary | None) -> str:
    if isinstance(summary, ValidateSummary):
        return f"{len(summary.leaves)} leaves, {summary.warnings} warnings"
    if isinstance(summary, GenerateSummary):
        return (
            f"{summary.phase1_records} phase-1 + {summary.phase2_records} phase-2 records, "
            f"{summary.teacher_calls} teacher calls"
        )
    if isinstance(summary, TrainSummary):
        return summary.final
    if isinstance(summary, EvaluateSummary):
        text = ", ".join(summary.evaluations)
        text += f"; skipped: {', '.join(summary.skipped)}" if summary.skipped else ""
        flagged = len(summary.regressions)
        return text + (f"; {flagged} regressions flagged" if flagged else "")
    if isinstance(summary, ReportSummary):
        return summary.report
    return ""


def stage_table(manifest: Manifest) -> Table:
    table = Table(title="run summary")
    for name, justify in (("stage", "left"), ("status", "left"), ("time", "right"), ("result", "left")):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    style = {"done": "green", "failed": "red", "interrupted": "yellow", "running": "yellow"}
    total = 0.0
    for stage in STAGES:
        record = manifest.stage(stage)
        total += record.seconds
        result = record.error if record.error else _summary_line(record.summary)
        table.add_row(
            stage,
            f"[{style.get(record.status, 'dim')}]{record.status}[/]",
            _seconds(record.seconds),
            escape(result),
        )
    table.add_section()
    table.add_row("total", "", _seconds(total), "")
    return table


def run_command(
    ctx: typer.Context,
    taxonomy: Annotated[
        Path, typer.Argument(help="Taxonomy root (holds compositional_skills/, knowledge/).")
    ],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run directory (default: runs/<taxonomy>-<profile>).")
    ] = None,
    profile: Annotated[
        str, typer.Option("--profile", "-p", help=f"Settings profile: {', '.join(PROFILES)}.")
    ] = "quick",
    teacher: Annotated[
        str | None, typer.Option("--teacher", help="Teacher model spec (default: the embedded model).")
    ] = None,
    judge: Annotated[
        str | None,
        typer.Option("--judge", help="Judge model: filters generated data and rates evaluation answers."),
    ] = None,
    student: Annotated[
        str, typer.Option("--student", help="Model to train: a Hugging Face directory or 'default'.")
    ] = "default",
    samples_per_leaf: Annotated[
        int | None, typer.Option("--samples-per-leaf", "-n", min=1, help="Overrides the profile.")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of generation and training.")] = None,
    from_stage: Annotated[
        str | None, typer.Option("--from", help=f"Redo from this stage on: {', '.join(STAGES)}.")
    ] = None,
    nproc: Annotated[int, typer.Option("--nproc", min=1, help="Training processes (GPUs).")] = 1,
    allow_documents: AllowDocuments = None,
) -> None:
    """Validate, generate, train, evaluate and report, in one run directory; run again to resume.

    Re-running the same command skips finished stages and resumes an interrupted one; a changed input
    (taxonomy, documents, settings, models) is named and the stages it affects are redone.
    Writes OUT/manifest.json, OUT/data, OUT/train/final (the tuned model), OUT/eval and OUT/report.html.

    Example: labalign run examples/taxonomy --out runs/quick
    """
    from labalign.run.runner import RunInterrupted, RunOptions, run

    chosen = get_profile(profile)
    s = layered_settings(
        ctx,
        chosen.settings,
        {
            "teacher.model": teacher,
            "sdg.judge": judge,
            "sdg.samples_per_leaf": samples_per_leaf,
            "sdg.seed": seed,
            "train.seed": seed,
            "documents.allowed_roots": allowed_roots_override(ctx, allow_documents),
        },
    )
    run_dir = out or Path("runs") / f"{taxonomy.resolve().name}-{chosen.name}"
    options = RunOptions(
        taxonomy=taxonomy.resolve(),
        out=run_dir,
        profile=chosen,
        student=student,
        eval_judge=judge,
        from_stage=from_stage,
        nproc=nproc,
        command=["labalign", *sys.argv[1:]],
    )
    err_console.print(
        f"run [bold]{escape(str(run_dir))}[/] · profile {chosen.name} ({chosen.summary_here()}) · "
        f"teacher {escape(redact_text(s.teacher.model))} · student {escape(redact_text(student))}",
        soft_wrap=True,
        highlight=False,
    )
    try:
        manifest = run(options, s, err_console)
    except RunInterrupted as exc:
        err_console.print(f"[yellow]{escape(str(exc))}[/]", soft_wrap=True, highlight=False)
        raise typer.Exit(130) from exc
    console.print(stage_table(manifest))
    final = run_dir / "train" / "final"
    gguf = run_dir / "train" / "final.gguf"
    lines = (
        f"report: {run_dir / 'report.html'}\nchat:   labalign chat {final}\nserve:  labalign serve {final}"
    )
    if gguf.is_file():
        lines += f"\ngguf:   {gguf} (llama.cpp, LM Studio; Ollama: labalign model export --format ollama)"
    console.print(lines, highlight=False, soft_wrap=True)
