"""`labalign run` as a library call: the stages in order in one run directory, the manifest updated
around each, resumed where the last attempt stopped, redone from wherever an input changed."""

from __future__ import annotations

import contextlib
import importlib.metadata
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from labalign.config import Settings
from labalign.dirlock import GENERATE_LOCK, locked
from labalign.errors import LabalignError
from labalign.evaluate.questions import default_heldout_dir
from labalign.interrupts import stop_promptly
from labalign.manifest import STAGES, Manifest, StageRecord, load_manifest, now
from labalign.redact import redact_argv, redact_data
from labalign.run.inputs import changed_inputs, changed_settings, collect_inputs, fingerprint, subset
from labalign.run.profiles import Profile
from labalign.run.stages import DATA, STAGE_FUNCTIONS, RunContext

_VERSIONED = ("labalign", "torch", "transformers", "peft", "llama-cpp-python", "openai", "lm-eval")


class RunInterrupted(LabalignError):
    """Ctrl-C or SIGTERM: the manifest says where to resume."""


@dataclass
class RunOptions:
    taxonomy: Path
    out: Path
    profile: Profile
    student: str = "default"
    eval_judge: str | None = None
    from_stage: str | None = None
    nproc: int = 1
    command: list[str] = field(default_factory=list)


@dataclass
class StagePlan:
    stage: str
    action: str  # skip | resume | run
    reason: str = ""


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[name] = importlib.metadata.version(name)
    return out


def _fingerprints(options: RunOptions, settings: Settings, inputs: dict[str, str]) -> dict[str, str]:
    s = settings.model_dump(mode="json")
    fp: dict[str, str] = {}
    fp["validate"] = fingerprint(subset(inputs, "taxonomy/"), s["taxonomy"])
    fp["generate"] = fingerprint(
        fp["validate"], subset(inputs, "documents/"), s["teacher"], s["sdg"], s["documents"]
    )
    # The GGUF export is the report stage's work (seconds): choosing it must not redo training.
    train = {k: v for k, v in s["train"].items() if k != "export_gguf"}
    fp["train"] = fingerprint(fp["generate"], options.student, train)
    p = options.profile
    fp["evaluate"] = fingerprint(
        fp["train"], subset(inputs, "heldout/"), options.eval_judge, p.evals, p.eval_max_tokens, p.eval_seeds
    )
    fp["report"] = fingerprint(fp["evaluate"], s["train"]["export_gguf"])
    return fp


def plan_stages(manifest: Manifest, fingerprints: dict[str, str], from_stage: str | None) -> list[StagePlan]:
    """What each stage after validation does this time. Once one stage runs, every later one runs
    from scratch; the report is always rendered again (it is cheap and shows the latest state)."""
    plans: list[StagePlan] = []
    rerun = False
    for stage in STAGES[1:]:
        record = manifest.stage(stage)
        same = record.fingerprint == fingerprints[stage]
        if from_stage is not None and STAGES.index(stage) >= STAGES.index(from_stage):
            plan = StagePlan(stage, "run", f"--from {from_stage}")
        elif rerun:
            plan = StagePlan(stage, "run", "an earlier stage ran")
        elif record.status == "done" and same:
            plan = StagePlan(stage, "skip", "done")
        elif same and record.status in ("running", "interrupted", "failed"):
            plan = StagePlan(stage, "resume", f"{record.status} before")
        elif record.fingerprint is None:
            plan = StagePlan(stage, "run", "not started")
        else:
            plan = StagePlan(stage, "run", "inputs or settings changed")
        if stage == "report" and plan.action == "skip":
            plan = StagePlan(stage, "run", "always rendered")
        rerun = rerun or plan.action != "skip"
        plans.append(plan)
    return plans


class Runner:
    def __init__(self, options: RunOptions, settings: Settings, console: Console) -> None:
        self.options = options
        self.settings = settings
        self.console = console
        self.run_dir = options.out
        self.manifest = Manifest()

    def _context(self) -> RunContext:
        return RunContext(
            run_dir=self.run_dir,
            taxonomy=self.options.taxonomy,
            settings=self.settings,
            profile=self.options.profile,
            student=self.options.student,
            eval_judge=self.options.eval_judge,
            console=self.console,
            nproc=self.options.nproc,
        )

    def _stage_lock(self, name: str) -> contextlib.AbstractContextManager[None]:
        """The generate stage writes where `labalign generate --out RUN/data` would: each holds that
        folder's lock, so the two never interleave their files (the run's own lock is on RUN only)."""
        if name == "generate":
            return locked(self.run_dir / DATA, what=GENERATE_LOCK)
        return contextlib.nullcontext()

    def _stage(self, name: str, ctx: RunContext, fp: str | None) -> None:
        record = self.manifest.stage(name)
        record.status, record.started, record.finished = "running", now(), None
        record.fingerprint, record.error = fp, None
        record.attempts += 1
        if ctx.fresh:
            record.seconds, record.attempts, record.summary = 0.0, 1, None
        self.manifest.save(self.run_dir)
        self.console.rule(f"[bold]{name}[/]" + ("" if ctx.fresh else " (resuming)"))
        start = time.monotonic()
        try:
            with self._stage_lock(name):
                record.summary = STAGE_FUNCTIONS[name](ctx)
        except KeyboardInterrupt:
            self._end(record, start, "interrupted", "interrupted")
            raise RunInterrupted(
                f"interrupted during {name}",
                path=self.run_dir,
                hint="run the same command again to resume",
            ) from None
        except LabalignError as exc:
            self._end(record, start, "failed", str(exc))
            raise
        except Exception as exc:
            self._end(record, start, "failed", f"{type(exc).__name__}: {exc}")
            raise
        self._end(record, start, "done", None)

    def _end(self, record: StageRecord, start: float, status: Any, error: str | None) -> None:
        record.status, record.error = status, error
        record.finished = now()
        record.seconds += time.monotonic() - start
        self.manifest.save(self.run_dir)

    def _announce_changes(self, previous: Manifest, inputs: dict[str, str]) -> None:
        changes = changed_inputs(previous.inputs, inputs)
        changes += changed_settings(previous.settings, self.manifest.settings)
        changes += changed_settings(previous.models, self.manifest.models, "models.")
        if changes:
            self.console.print(
                "[yellow]changed since the last run:[/] " + "; ".join(changes),
                soft_wrap=True,
                highlight=False,
            )

    def run(self) -> Manifest:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with locked(self.run_dir), stop_promptly("run the same command again to resume"):
            previous = load_manifest(self.run_dir)
            self.manifest = previous.model_copy(deep=True) if previous else Manifest()
            o = self.options
            self.manifest.command = redact_argv(o.command)
            self.manifest.taxonomy = str(o.taxonomy)
            self.manifest.profile = o.profile.name
            models = {
                "teacher": self.settings.teacher.model,
                "judge": self.settings.sdg.judge,
                "student": o.student,
                "eval_judge": o.eval_judge,
            }
            self.manifest.models = redact_data(models)
            self.manifest.settings = redact_data(self.settings.model_dump(mode="json", exclude={"cache_dir"}))
            self.manifest.versions = versions()
            ctx = self._context()
            stage = "validate"
            try:
                self._stage(stage, ctx, None)
                inputs = collect_inputs(
                    o.taxonomy, ctx.leaves, default_heldout_dir(o.taxonomy), self.settings
                )
                if previous is not None:
                    self._announce_changes(previous, inputs)
                self.manifest.inputs = inputs
                fps = _fingerprints(o, self.settings, inputs)
                self.manifest.stage("validate").fingerprint = fps["validate"]
                self.manifest.save(self.run_dir)
                for plan in plan_stages(self.manifest, fps, o.from_stage):
                    stage = plan.stage
                    if plan.action == "skip":
                        self.console.print(f"[dim]{plan.stage}: done, skipped[/]")
                        continue
                    ctx.fresh = plan.action == "run"
                    self._stage(plan.stage, ctx, fps[plan.stage])
            except Exception:
                # The report of a stopped run still shows what is there; never mask the real error.
                if stage != "report":
                    with contextlib.suppress(Exception):
                        STAGE_FUNCTIONS["report"](ctx)
                raise
        return self.manifest


def run(options: RunOptions, settings: Settings, console: Console) -> Manifest:
    """Run (or resume) every stage of a run; returns the final manifest."""
    if not options.taxonomy.is_dir():
        raise LabalignError(
            "taxonomy folder not found",
            path=options.taxonomy,
            hint="give the folder that holds compositional_skills/ and knowledge/",
        )
    if options.from_stage is not None and options.from_stage not in STAGES:
        raise LabalignError(f"unknown stage {options.from_stage!r}", hint=f"stages: {', '.join(STAGES)}")
    return Runner(options, settings, console).run()
