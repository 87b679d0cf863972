"""`labalign evaluate`: did tuning work? Branch evaluation of a tuned model against its base."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from labalign.cli._common import OutputFormat, console, err_console, print_json, settings
from labalign.config import Settings
from labalign.errors import LabalignError
from labalign.evaluate import branch
from labalign.evaluate.questions import EvalQuestion, default_heldout_dir, gather
from labalign.llm.types import Backend
from labalign.taxonomy import ValidationOptions, load_leaves

app = typer.Typer(name="evaluate", help="Measure what tuning changed.", no_args_is_help=True)


def _open(spec: str, s: Settings) -> Backend:
    from labalign.llm.cache import CachedBackend
    from labalign.llm.resolve import open_backend

    # Cached: re-running an evaluation (or the report) does not regenerate answers.
    return CachedBackend(
        open_backend(spec, settings=s.llm, cache_dir=s.cache_dir), s.cache_dir / "eval" / "cache.sqlite"
    )


async def run_branch(
    questions: list[EvalQuestion],
    model: Backend,
    base: Backend | None,
    judge: Backend | None,
    max_tokens: int,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        tasks: dict[str, TaskID] = {}

        def on_progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = progress.add_task(phase, total=total)
            progress.update(tasks[phase], completed=done)

        try:
            tuned = await branch.score_model(
                model, questions, judge=judge, max_tokens=max_tokens, on_progress=on_progress, label="tuned"
            )
            before = None
            if base is not None:
                before = await branch.score_model(
                    base, questions, judge=judge, max_tokens=max_tokens, on_progress=on_progress, label="base"
                )
        finally:
            for backend in {id(b): b for b in (model, base, judge) if b is not None}.values():
                await backend.aclose()
    result = branch.report(questions, tuned, before, judge.identity if judge else None)
    return result, branch.answer_records(questions, tuned, before)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _delta_cell(delta: dict[str, Any] | None) -> Text:
    if not delta:
        return Text("-")
    text = f"{delta['mean']:+.3f} [{delta['ci_low']:+.3f}, {delta['ci_high']:+.3f}]"
    style = ("green" if delta["mean"] > 0 else "red") if delta["significant"] else ""
    return Text(text, style=style)


def branch_table(result: dict[str, Any]) -> Table:
    has_base = "base" in result["overall"]
    table = Table(title="branch evaluation (token F1; delta with 95% bootstrap CI)")
    for name in ("leaf", "n", "base", "tuned", "delta", "W/T/L"):
        if name in ("base", "delta", "W/T/L") and not has_base:
            continue
        table.add_column(name, justify="left" if name == "leaf" else "right", overflow="fold")
    rows = [*result["leaves"], {"leaf": "overall", **result["overall"], "model": result["overall"]["model"]}]
    for entry in rows:
        cells: list[Text | str] = [
            Text(entry["leaf"], style="bold" if entry["leaf"] == "overall" else ""),
            str(entry["model"]["n"]),
        ]
        if has_base:
            d = entry["delta"]["f1"]
            cells += [
                _fmt(entry["base"]["f1"]),
                _fmt(entry["model"]["f1"]),
                _delta_cell(d),
                f"{d['wins']}/{d['ties']}/{d['losses']}",
            ]
        else:
            cells.append(_fmt(entry["model"]["f1"]))
        table.add_row(*cells)
    return table


@app.command("branch")
def branch_command(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", help="The tuned model (any model spec).")],
    base: Annotated[
        str | None, typer.Option("--base", help="The model before tuning, to compare with.")
    ] = None,
    judge: Annotated[str | None, typer.Option("--judge", help="Judge model: adds 1-10 ratings.")] = None,
    taxonomy: Annotated[Path | None, typer.Option("--taxonomy", "-t", help="Taxonomy root.")] = None,
    heldout: Annotated[
        Path | None,
        typer.Option(
            "--heldout",
            help="Hand-written held-out questions "
            "(<leaf>/heldout.jsonl); default: 'heldout' beside the taxonomy.",
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option("--data", help="A `labalign generate` folder: adds its held-out generated questions."),
    ] = None,
    seeds: Annotated[
        bool, typer.Option("--seeds/--no-seeds", help="Also ask the leaves' seed questions.")
    ] = True,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=8)] = 256,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write branch.json, answers.jsonl and branch.png here.")
    ] = None,
    fmt: Annotated[OutputFormat, typer.Option("--format")] = OutputFormat.text,
) -> None:
    """Answer each leaf's held-out questions with the tuned model and its base, and compare.

    Scores: token F1 and ROUGE-L against the reference answers, plus 1-10 judge ratings with --judge.

    Example: labalign evaluate branch --model runs/x/final --base default -t examples/taxonomy --format json
    """
    s = settings(ctx)
    root = taxonomy or s.taxonomy.path
    leaves = load_leaves([root], ValidationOptions.from_settings(s, check_documents=False))
    questions = gather(
        leaves, heldout_dir=heldout or default_heldout_dir(root), generated=data, include_seeds=seeds
    )
    if not questions:
        raise LabalignError("no evaluation questions found", path=root, hint="give --heldout or --data")
    model_b = _open(model, s)
    base_b = _open(base, s) if base else None
    judge_b = _open(judge, s) if judge else None
    result, answers = asyncio.run(run_branch(questions, model_b, base_b, judge_b, max_tokens))
    if out is not None:
        from labalign.evaluate.plots import branch_chart

        out.mkdir(parents=True, exist_ok=True)
        (out / "branch.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        with (out / "answers.jsonl").open("w", encoding="utf-8") as f:
            for rec in answers:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        branch_chart(result, out / "branch.png")
    if fmt is OutputFormat.json:
        print_json(result)
    else:
        console.print(branch_table(result))
