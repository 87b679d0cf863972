"""The stages of a run. Each reads and writes only inside the run directory and returns a small
summary for the manifest; each is resumable on its own (generation through the request cache,
training through its checkpoints, evaluation through its answer cache)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console

from labalign.config import Settings
from labalign.errors import LabalignError
from labalign.fileio import write_text_atomic
from labalign.manifest import (
    EvaluateSummary,
    GeneralReplayInfo,
    GenerateSummary,
    GgufExport,
    LeafEntry,
    LeafKept,
    PhaseBrief,
    ReportSummary,
    StageSummary,
    TrainSummary,
    ValidateSummary,
)
from labalign.progress import phase_progress
from labalign.run.profiles import Profile
from labalign.sdg.stats import GenerationStats
from labalign.taxonomy import Leaf, ValidationOptions, validate_paths
from labalign.taxonomy.validate import raise_for_errors

DATA, TRAIN, EVAL = "data", "train", "eval"
_PHASE_KEYS = ("phase", "steps", "samples", "tokens", "seconds", "heldout_loss", "best_step")


@dataclass
class RunContext:
    """What every stage sees. `fresh` is True when the stage starts over (its earlier outputs are
    stale), False when it resumes an interrupted attempt."""

    run_dir: Path
    taxonomy: Path
    settings: Settings
    profile: Profile
    student: str
    eval_judge: str | None
    console: Console
    nproc: int = 1
    fresh: bool = True
    leaves: list[Leaf] = field(default_factory=list)

    @property
    def teacher(self) -> str:
        return self.settings.teacher.model


def validate(ctx: RunContext) -> ValidateSummary:
    result = validate_paths([ctx.taxonomy], ValidationOptions.from_settings(ctx.settings))
    report = result.report
    write_text_atomic(ctx.run_dir / "validation.json", report.record().model_dump_json(indent=2) + "\n")
    raise_for_errors(result)
    if not result.leaves:
        raise LabalignError(
            "no leaves (qna.yaml files) in the taxonomy",
            path=ctx.taxonomy,
            hint="give the folder that holds compositional_skills/ and knowledge/",
        )
    ctx.leaves = result.leaves
    for line in report.lines():
        ctx.console.print(line, highlight=False, soft_wrap=True, markup=False)
    return ValidateSummary(
        leaves=[
            LeafEntry(
                name=leaf.name,
                kind=leaf.kind,
                seed_examples=len(leaf.seed_examples),
                document=leaf.document.repo if leaf.document else None,
            )
            for leaf in result.leaves
        ],
        files=len(report.files),
        errors=report.error_count,
        warnings=report.warning_count,
    )


def generate(ctx: RunContext) -> GenerateSummary:
    from labalign.sdg.driver import (
        empty_leaf_warnings,
        funnel_table,
        leaf_inputs,
        open_teacher,
        options_from_settings,
        run_generation,
    )

    out = ctx.run_dir / DATA
    if ctx.fresh and (out / "leaves").exists():
        shutil.rmtree(out / "leaves")  # a removed leaf must not linger; the request cache stays
    out.mkdir(parents=True, exist_ok=True)
    s = ctx.settings
    jobs = leaf_inputs(ctx.leaves, s)
    cache = out / "cache.sqlite"
    teacher = open_teacher(s.teacher.model, s, cache)
    judge = open_teacher(s.sdg.judge, s, cache) if s.sdg.judge else None
    result = asyncio.run(run_generation(jobs, teacher, judge, out, options_from_settings(s), ctx.console))
    stats = GenerationStats.load(out)
    ctx.console.print(funnel_table(stats))
    for warning in empty_leaf_warnings(stats):
        ctx.console.print(f"warning: {warning}", style="yellow", markup=False, soft_wrap=True)
    if not result.phase1 and not result.phase2:
        raise LabalignError(
            "the teacher's output gave no training records for any leaf (see the funnel above)",
            path=out / "stats.json",
            hint="use a stronger teacher (--teacher http://host:port/v1) or more samples per leaf",
        )
    return GenerateSummary(
        phase1_records=len(result.phase1),
        phase2_records=len(result.phase2),
        teacher_calls=sum(leaf.teacher_calls for leaf in stats.leaves),
        leaves={leaf.leaf: LeafKept(kept=leaf.kept, heldout=leaf.heldout) for leaf in stats.leaves},
    )


def _phase_file(path: Path) -> Path | None:
    return path if path.is_file() and path.stat().st_size > 0 else None


def train(ctx: RunContext) -> TrainSummary:
    out = ctx.run_dir / TRAIN
    if ctx.fresh and out.exists():
        shutil.rmtree(out)  # checkpoints of other data or settings must not be resumed
    data = ctx.run_dir / DATA
    phase1, phase2 = _phase_file(data / "phase1.jsonl"), _phase_file(data / "phase2.jsonl")
    replay, replay_summary = _general_replay(ctx)
    from labalign.train.launch import launch
    from labalign.train.phases import TrainConfig

    result = launch(
        TrainConfig(
            model=ctx.student,
            out=out,
            phase1=phase1,
            phase2=phase2,
            replay=replay,
            settings=ctx.settings.train,
            resume=True,  # a no-op on an empty folder; continues an interrupted attempt
            cache_dir=ctx.settings.cache_dir,
        ),
        ctx.nproc,
    )
    return TrainSummary(
        final=str(out / "final"),
        phases=[
            PhaseBrief.model_validate(p.model_dump(include=set(PhaseBrief.model_fields)))
            for p in result.phases
        ],
        general_replay=replay_summary,
    )


def _general_replay(ctx: RunContext) -> tuple[Path | None, GeneralReplayInfo | None]:
    """The general replay file training mixes in: the user's (train.replay_data), or text the base
    student writes itself from labalign's openings, cached per machine (a second run asks nothing)."""
    s = ctx.settings.train
    if s.replay_ratio <= 0:
        return None, None
    if s.replay_data:
        return Path(s.replay_data).expanduser(), GeneralReplayInfo(source=s.replay_data)
    from labalign.modeling.models import resolve_model
    from labalign.sdg.general_replay import ReplayOptions, generate_general_replay

    cache_dir = ctx.settings.cache_dir
    path = ctx.run_dir / DATA / "general_replay.jsonl"
    options = ReplayOptions.from_settings(ctx.settings)
    with phase_progress(ctx.console) as on_progress:
        summary = generate_general_replay(
            resolve_model(ctx.student, cache_dir),
            path,
            cache_path=cache_dir / "general-replay.sqlite",
            options=options,
            batch_size=ctx.settings.llm.local_batch_size,
            on_progress=lambda done, total: on_progress("general replay: the base's own text", done, total),
        )
    where = "shipped with labalign for this student" if summary.shipped else f"{summary.hits} from the cache"
    ctx.console.print(
        f"general replay: {summary.records} texts by the base student ({where})", highlight=False
    )
    return path, GeneralReplayInfo(source="base model", **asdict(summary))


def evaluate(ctx: RunContext) -> EvaluateSummary:
    from labalign.evaluate.results import Skipped
    from labalign.evaluate.suite import EvalPlan, evaluate_all

    out = ctx.run_dir / EVAL
    if ctx.fresh and out.exists():
        shutil.rmtree(out)  # results of the model that was there before
    out.mkdir(parents=True, exist_ok=True)
    from labalign.modeling.models import resolve_model

    plan = EvalPlan(
        model=str(ctx.run_dir / TRAIN / "final"),
        # The exact weights training started from, through the same engine as the tuned model ('default'
        # would otherwise be the quantized GGUF through llama.cpp): before and after differ only by tuning.
        base=str(resolve_model(ctx.student, ctx.settings.cache_dir)),
        judge=ctx.eval_judge,
        taxonomy=ctx.taxonomy,
        out=out,
        data=ctx.run_dir / DATA,
        evals=ctx.profile.evals,
        max_tokens=ctx.profile.eval_max_tokens,
        # The machine's evaluation cache (keyed by each model's identity, which changes with its weights),
        # as the log-likelihood scores are: a later run on the same base and questions does not decode the
        # base's answers again (the quick run's branch evaluation: 137 s on a first run, 68 s after), and a
        # killed run resumes.
        cache_path=None,
        seeds=ctx.profile.eval_seeds and not ctx.settings.sdg.seed_records,  # trained on: not held out
    )
    with phase_progress(ctx.console, transient=False) as on_progress:
        results = evaluate_all(plan, ctx.settings, on_progress=on_progress)
    evaluations = results.evaluations.items()
    return EvaluateSummary(
        evaluations=sorted(k for k, v in evaluations if not isinstance(v, Skipped)),
        skipped={k: v.skipped for k, v in evaluations if isinstance(v, Skipped)},
        regressions=[r.message for r in results.regressions],
    )


def report(ctx: RunContext) -> ReportSummary:
    from labalign.report import render_report

    gguf = None
    quant = ctx.settings.train.export_gguf
    final = ctx.run_dir / TRAIN / "final"
    # No final/ (a run stopped before training ended): nothing to export, and nothing to warn of.
    if quant is not None and final.exists():
        if not (final / "config.json").is_file():
            ctx.console.print(
                f"warning: no GGUF export: {final} is not a full model "
                "(a LoRA adapter? set train.merge_lora)",
                markup=False,
                highlight=False,
            )
        else:
            from labalign.export import Quant, export_gguf

            ctx.console.print(f"exporting {final} to GGUF ({quant})", highlight=False)
            result = export_gguf(final, ctx.run_dir / TRAIN / "final.gguf", Quant(quant))
            gguf = GgufExport(path=str(result.path), quant=str(result.quant), bytes=result.bytes)
    return ReportSummary(report=str(render_report(ctx.run_dir)), gguf=gguf)


STAGE_FUNCTIONS: dict[str, Callable[[RunContext], StageSummary]] = {
    "validate": validate,
    "generate": generate,
    "train": train,
    "evaluate": evaluate,
    "report": report,
}
