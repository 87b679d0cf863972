"""Generation as the CLI and `labalign run` drive it: leaves and their document chunks resolved per the
settings, the teacher behind the request cache, progress bars per leaf, and the funnel table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from labalign.config import Settings
from labalign.documents import token_counter
from labalign.errors import LabalignError
from labalign.llm.types import Backend
from labalign.sdg.generate import GenerateOptions, GenerateResult, LeafInput, generate
from labalign.sdg.pipeline import Pipeline, PipelineKind
from labalign.sdg.stats import STATS_FILE, GenerationStats, LeafFunnel
from labalign.taxonomy import Leaf
from labalign.taxonomy.documents import leaf_documents


def select_leaves(leaves: list[Leaf], wanted: Sequence[str] | None) -> list[Leaf]:
    """The leaves named (or under the folders named) in `wanted`; all when it is empty."""
    if not wanted:
        return leaves
    chosen = [
        leaf
        for leaf in leaves
        if any(leaf.name == w.strip("/") or leaf.name.startswith(w.strip("/") + "/") for w in wanted)
    ]
    if not chosen:
        raise LabalignError(
            f"no leaf matches --leaves {' '.join(wanted)}",
            hint=f"leaves are: {', '.join(leaf.name for leaf in leaves)}",
        )
    return chosen


def leaf_inputs(leaves: list[Leaf], s: Settings) -> list[LeafInput]:
    """Each leaf with its document chunks (knowledge), resolved and chunked per the settings."""
    count = token_counter(s.documents.tokenizer)
    jobs: list[LeafInput] = []
    for leaf in leaves:
        docs = leaf_documents(leaf, s, count)
        jobs.append(LeafInput(leaf) if docs is None else LeafInput(leaf, docs.chunks, docs.provenance))
    return jobs


def open_teacher(spec: str, s: Settings, cache_path: Path | None) -> Backend:
    """The model behind a spec, behind the request cache when one is given (resume without re-asking)."""
    from labalign.llm.resolve import open_backend, open_cached_backend

    if cache_path is None:
        return open_backend(spec, settings=s.llm, cache_dir=s.cache_dir)
    return open_cached_backend(spec, cache_path, settings=s.llm, cache_dir=s.cache_dir)


def options_from_settings(
    s: Settings, pipelines: dict[PipelineKind, Pipeline] | None = None
) -> GenerateOptions:
    """GenerateOptions from the `sdg:` settings (and pipelines replacing the built-in ones)."""
    chat = None if s.sdg.teacher_format == "auto" else s.sdg.teacher_format == "chat"
    return GenerateOptions(
        samples_per_leaf=s.sdg.samples_per_leaf,
        seed=s.sdg.seed,
        heldout_fraction=s.sdg.heldout_fraction,
        replay_fraction=s.sdg.replay_fraction,
        system_prompt=s.sdg.system_prompt,
        context_variants=s.sdg.context_variants,
        document_records=s.sdg.document_records,
        document_pretraining=s.sdg.document_pretraining,
        seed_records=s.sdg.seed_records,
        fact_questions=s.sdg.fact_questions,
        knowledge_qa=s.sdg.knowledge_qa,
        oversample=s.sdg.oversample,
        dedup=s.sdg.dedup,
        chat=chat,
        pipelines=dict(pipelines or {}),
    )


async def run_generation(
    jobs: list[LeafInput],
    teacher: Backend,
    judge: Backend | None,
    out: Path,
    options: GenerateOptions,
    console: Console,
) -> GenerateResult:
    """Generate with one progress bar per leaf (stage, rows done of rows in the stage, ETA); the
    backends are closed at the end."""
    with Progress(
        TextColumn("{task.fields[leaf]}", style="bold"),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as progress:
        tasks: dict[str, TaskID] = {
            j.leaf.name: progress.add_task("waiting", total=None, leaf=j.leaf.name) for j in jobs
        }

        def on_event(leaf: str, block: str, done: int, total: int) -> None:
            progress.update(tasks[leaf], description=block, completed=done, total=total)

        try:
            result = await generate(
                jobs, teacher=teacher, judge=judge, out_dir=out, options=options, on_event=on_event
            )
        finally:
            await teacher.aclose()
            if judge is not None and judge is not teacher:
                await judge.aclose()
    _raise_if_every_call_failed(out)
    return result


def _raise_if_every_call_failed(out: Path) -> None:
    """A teacher that answered nothing (down, wrong URL, wrong key) is an error, not an empty dataset
    that training would then run on. What was generated stays; a rerun asks only what is missing."""
    stats_path = out / STATS_FILE
    if not stats_path.is_file():
        return
    calls, failed, kinds = GenerationStats.load(out).failed_calls()
    if calls and failed >= calls:
        why = ", ".join(f"{kind} {n}" for kind, n in kinds.most_common())
        raise LabalignError(
            f"every teacher call failed ({calls} calls: {why})",
            path=stats_path,
            hint="check that the teacher (and judge) is running and reachable, with the right model name "
            "and key; then run the same command again",
        )


def funnel_table(stats: GenerationStats) -> Table:
    """stats.json as a table: per leaf, each stage's rows in and out and why rows were dropped."""
    table = Table(title="generation funnel")
    for name in ("leaf / stage", "in", "out", "dropped (why)"):
        table.add_column(name, justify="right" if name in ("in", "out") else "left", overflow="fold")
    for leaf in stats.leaves:
        table.add_section()
        table.add_row(
            Text(leaf.leaf, style="bold"),
            "",
            str(leaf.kept),
            "kept for training"
            + (f" ({leaf.facts} fact questions{_sentences_asked(leaf)})" if leaf.facts else "")
            + f", {leaf.heldout} held out, {leaf.rounds} rounds, "
            f"{leaf.teacher_calls} teacher calls",
        )
        for stage in leaf.stages:
            why = ", ".join(f"{k} {v}" for k, v in stage.dropped.items() if v)
            table.add_row(Text("  " + stage.block), str(stage.rows_in), str(stage.rows_out), Text(why))
    return table


def _sentences_asked(leaf: LeafFunnel) -> str:
    if not leaf.fact_sentences:
        return ""
    return f" on {leaf.fact_sentences - len(leaf.unasked_facts)} of {leaf.fact_sentences} sentences"


def empty_leaf_warnings(stats: GenerationStats) -> list[str]:
    """One line per leaf that produced nothing, naming the stage that lost most rows."""
    out = []
    for leaf in stats.leaves:
        if leaf.kept == 0:
            worst = max(leaf.stages, key=lambda s: s.rows_in - s.rows_out, default=None)
            where = f"; most rows were lost at {worst.block} ({worst.dropped})" if worst else ""
            out.append(f"leaf {leaf.leaf} produced no samples{where}")
    return out
