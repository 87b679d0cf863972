"""`labalign generate` and `labalign data`: synthetic data from a taxonomy, and a look at it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.panel import Panel
from rich.text import Text

from labalign.cli._common import (
    AllowDocuments,
    OutputFormat,
    allowed_roots_override,
    console,
    err_console,
    layered_settings,
    print_json,
)
from labalign.dirlock import GENERATE_LOCK, locked
from labalign.errors import LabalignError
from labalign.interrupts import stop_promptly
from labalign.jsonl import read_jsonl
from labalign.run.profiles import PROFILES, get_profile
from labalign.sdg.driver import (
    empty_leaf_warnings,
    funnel_table,
    leaf_inputs,
    open_teacher,
    options_from_settings,
    run_generation,
    select_leaves,
)
from labalign.sdg.pipeline import Pipeline, PipelineKind, load_pipeline
from labalign.sdg.stats import GenerationStats
from labalign.taxonomy import ValidationOptions, load_leaves

data_app = typer.Typer(name="data", help="Inspect generated datasets.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command("generate")(generate_command)
    app.add_typer(data_app)


def generate_command(
    ctx: typer.Context,
    taxonomy: Annotated[Path, typer.Argument(help="Taxonomy root.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (re-run to resume).")],
    profile: Annotated[
        str | None,
        typer.Option(
            "--profile",
            "-p",
            help=f"Settings profile, as in `labalign run` ({', '.join(PROFILES)}): the same data as a run "
            "with that profile. Default: the settings alone.",
        ),
    ] = None,
    teacher: Annotated[
        str | None, typer.Option("--teacher", help="Teacher model spec (default: settings).")
    ] = None,
    judge: Annotated[
        str | None, typer.Option("--judge", help="Judge model spec (default: the teacher).")
    ] = None,
    samples_per_leaf: Annotated[
        int | None, typer.Option("--samples-per-leaf", "-n", min=1, help="Samples to generate per leaf.")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of generation (setting sdg.seed).")] = None,
    leaves: Annotated[
        list[str] | None, typer.Option("--leaves", help="Only these leaves (or folders).")
    ] = None,
    pipeline: Annotated[
        list[Path] | None,
        typer.Option("--pipeline", help="Pipeline YAML replacing the built-in one of its kind (repeatable)."),
    ] = None,
    offline: Annotated[bool | None, typer.Option("--offline", help="Do not fetch remote documents.")] = None,
    allow_documents: AllowDocuments = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Do not use the request cache.")] = False,
) -> None:
    """Generate training data from a taxonomy with a teacher model, then filter, dedup and mix it.

    Writes DIR/phase1.jsonl (knowledge), DIR/phase2.jsonl (skills + replay), DIR/heldout.jsonl,
    DIR/leaves/<leaf>/samples.jsonl and DIR/stats.json. Killed? Run the same command again: every
    teacher answer already received is reused and the output is the same.

    Example: labalign generate examples/taxonomy --profile quick --out data/
    """
    s = layered_settings(
        ctx,
        get_profile(profile).settings if profile else None,
        {
            "teacher.model": teacher,
            "sdg.judge": judge,
            "sdg.samples_per_leaf": samples_per_leaf,
            "sdg.seed": seed,
            "taxonomy.offline": offline,
            "documents.allowed_roots": allowed_roots_override(ctx, allow_documents),
        },
    )
    chosen = select_leaves(load_leaves([taxonomy], ValidationOptions.from_settings(s)), leaves)
    pipelines: dict[PipelineKind, Pipeline] = {}
    for path in pipeline or []:
        p = load_pipeline(path)
        pipelines[p.config.kind] = p
    jobs = leaf_inputs(chosen, s)
    cache = None if no_cache else out / "cache.sqlite"
    options = options_from_settings(s, pipelines)
    with locked(out, what=GENERATE_LOCK), stop_promptly("run the same command again to resume"):
        teacher_backend = open_teacher(s.teacher.model, s, cache)
        judge_backend = open_teacher(s.sdg.judge, s, cache) if s.sdg.judge else None
        result = asyncio.run(run_generation(jobs, teacher_backend, judge_backend, out, options, err_console))
    stats = GenerationStats.load(out)
    console.print(funnel_table(stats))
    for warning in empty_leaf_warnings(stats):
        console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
    console.print(
        f"phase1.jsonl: {len(result.phase1)} records, phase2.jsonl: {len(result.phase2)} records "
        f"-> {escape(str(out))}",
        soft_wrap=True,
        highlight=False,
    )


@data_app.command("stats")
def data_stats(
    out: Annotated[Path, typer.Argument(help="A folder written by `labalign generate`.")],
    fmt: Annotated[
        OutputFormat, typer.Option("--format", help="text: the funnel table; json: stats.json and counts.")
    ] = OutputFormat.text,
) -> None:
    """Show the generation funnel and record counts of a generated dataset.

    Example: labalign data stats data/
    """
    stats = GenerationStats.load(out)
    counts: dict[str, dict[str, int]] = {}
    for phase in ("phase1", "phase2"):
        for rec in _read_jsonl(out / f"{phase}.jsonl"):
            variant = rec.get("metadata", {}).get("variant", "?")
            counts.setdefault(phase, {}).setdefault(variant, 0)
            counts[phase][variant] += 1
    if fmt is OutputFormat.json:
        print_json({**stats.model_dump(by_alias=True, exclude_none=True), "records": counts})
        return
    console.print(funnel_table(stats))
    for phase, by_variant in counts.items():
        parts = ", ".join(f"{k} {v}" for k, v in sorted(by_variant.items()))
        console.print(f"{phase}: {sum(by_variant.values())} records ({parts})", highlight=False)


@data_app.command("show")
def data_show(
    out: Annotated[Path, typer.Argument(help="A folder written by `labalign generate`.")],
    leaf: Annotated[str, typer.Option("--leaf", help="Leaf name, as in `labalign taxonomy list`.")],
    n: Annotated[int, typer.Option("-n", min=1, help="How many samples.")] = 5,
) -> None:
    """Print generated samples of one leaf, with their scores and provenance.

    Example: labalign data show data/ --leaf compositional_skills/writing/formal_business_rewrite -n 3
    """
    # Only the leaves this folder holds: --leaf is a name, never a path to read elsewhere (../..).
    leaves_dir = out / "leaves"
    known = sorted(p.parent.relative_to(leaves_dir).as_posix() for p in leaves_dir.rglob("samples.jsonl"))
    path = leaves_dir / leaf.strip("/") / "samples.jsonl"
    if leaf.strip("/") not in known:
        raise LabalignError(
            f"no samples for leaf {leaf!r}", path=out, hint=f"leaves: {', '.join(known) or 'none'}"
        )
    for rec in list(_read_jsonl(path))[:n]:
        body = Text()
        for m in rec["messages"]:
            body.append(f"{m['role']}: ", style="bold cyan" if m["role"] == "user" else "bold green")
            body.append(m["content"].strip() + "\n")
        meta = rec["metadata"]
        subtitle = f"{meta.get('variant', '')} · scores {meta.get('scores', {})} · {meta.get('sample', '')}"
        console.print(Panel(body, title=rec["id"], subtitle=Text(subtitle), title_align="left"))


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return read_jsonl(path) if path.is_file() else []
