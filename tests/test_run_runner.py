"""`labalign run`'s bookkeeping with the stages replaced by recorders: resume where it stopped,
redo from a changed input (and name it), --from, interrupts, failures and the lock."""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from labalign.config import load_settings
from labalign.dirlock import GENERATE_LOCK, locked
from labalign.errors import LabalignError
from labalign.manifest import (
    EvaluateSummary,
    GenerateSummary,
    ReportSummary,
    StageSummary,
    TrainSummary,
    ValidateSummary,
    load_manifest,
)
from labalign.run import runner, stages
from labalign.run.profiles import get_profile
from labalign.run.runner import RunInterrupted, RunOptions, plan_stages

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


FAKE_SUMMARIES: dict[str, StageSummary] = {  # what each faked stage reports
    "generate": GenerateSummary(phase1_records=1, phase2_records=1, teacher_calls=2, leaves={}),
    "train": TrainSummary(final="final", phases=[]),
    "evaluate": EvaluateSummary(evaluations=[], skipped={}, regressions=[]),
    "report": ReportSummary(report="report.html"),
}


class Recorder:
    """Stage functions that record their calls; `fail` maps a stage to the exception it raises once."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, bool]] = []
        self.fail: dict[str, BaseException] = {}
        fake: dict[str, Callable[[stages.RunContext], StageSummary]] = {}
        for name in ("generate", "train", "evaluate", "report"):
            fake[name] = self._make(name)
        fake["validate"] = self._validate
        monkeypatch.setattr(runner, "STAGE_FUNCTIONS", fake)

    def _validate(self, ctx: stages.RunContext) -> StageSummary:
        self.calls.append(("validate", ctx.fresh))
        return stages.validate(ctx)

    def _make(self, name: str) -> Callable[[stages.RunContext], StageSummary]:
        def stage(ctx: stages.RunContext) -> StageSummary:
            self.calls.append((name, ctx.fresh))
            if name in self.fail:
                raise self.fail.pop(name)
            return FAKE_SUMMARIES[name]

        return stage

    def ran(self) -> list[str]:
        out = [f"{name}{'' if fresh else ' (resume)'}" for name, fresh in self.calls if name != "validate"]
        self.calls.clear()
        return out


@pytest.fixture
def taxonomy(tmp_path: Path) -> Path:
    # A copy (its document inside it) with the held-out questions beside it, so tests may edit inputs.
    for name in ("taxonomy", "heldout"):
        shutil.copytree(EXAMPLES / name, tmp_path / "ex" / name)
    return tmp_path / "ex" / "taxonomy"


def go(taxonomy: Path, out: Path, console: Console | None = None, **kw: Any) -> Any:
    profile = get_profile(kw.pop("profile", "quick"))
    settings = load_settings(overrides=kw.pop("overrides", {}), defaults=profile.settings)
    options = RunOptions(taxonomy=taxonomy, out=out, profile=profile, **kw)
    return runner.run(options, settings, console or Console(file=io.StringIO()))


def test_second_run_skips_done_stages_and_renders_the_report(
    monkeypatch: pytest.MonkeyPatch, taxonomy: Path, tmp_path: Path
) -> None:
    rec = Recorder(monkeypatch)
    manifest = go(taxonomy, tmp_path / "run")
    assert rec.ran() == ["generate", "train", "evaluate", "report"]
    assert all(manifest.stage(s).status == "done" for s in ("validate", "generate", "train", "report"))
    assert manifest.inputs["documents/knowledge/history/quillmarrow_island/quillmarrow_island.md"]
    assert any(k.startswith("heldout/") for k in manifest.inputs)
    validated = manifest.stage("validate").summary
    assert isinstance(validated, ValidateSummary) and validated.leaves[0].name
    go(taxonomy, tmp_path / "run")
    assert rec.ran() == ["report"]
    assert load_manifest(tmp_path / "run") is not None


def test_interrupted_stage_resumes_and_later_stages_start_fresh(
    monkeypatch: pytest.MonkeyPatch, taxonomy: Path, tmp_path: Path
) -> None:
    rec = Recorder(monkeypatch)
    rec.fail["train"] = KeyboardInterrupt()
    with pytest.raises(RunInterrupted, match="interrupted during train"):
        go(taxonomy, tmp_path / "run")
    manifest = load_manifest(tmp_path / "run")
    assert manifest is not None and manifest.stage("train").status == "interrupted"
    assert rec.ran() == ["generate", "train", "report"]  # the report of a stopped run still renders
    manifest = go(taxonomy, tmp_path / "run")
    assert rec.ran() == ["train (resume)", "evaluate", "report"]
    assert manifest.stage("train").attempts == 2 and manifest.stage("generate").attempts == 1


def test_a_killed_stage_left_running_is_resumed(
    monkeypatch: pytest.MonkeyPatch, taxonomy: Path, tmp_path: Path
) -> None:
    rec = Recorder(monkeypatch)
    go(taxonomy, tmp_path / "run")
    manifest = load_manifest(tmp_path / "run")
    assert manifest is not None
    manifest.stage("evaluate").status = "running"  # what SIGKILL leaves behind
    manifest.save(tmp_path / "run")
    rec.ran()
    go(taxonomy, tmp_path / "run")
    assert rec.ran() == ["evaluate (resume)", "report"]


def test_changed_inputs_are_named_and_redone_from_the_stage_they_feed(
    monkeypatch: pytest.MonkeyPatch, taxonomy: Path, tmp_path: Path
) -> None:
    rec = Recorder(monkeypatch)
    go(taxonomy, tmp_path / "run")
    rec.ran()
    heldout = next((taxonomy.parent / "heldout").rglob("heldout.jsonl"))
    heldout.write_text(heldout.read_text() + '{"question": "Q?", "reference": "A."}\n')
    console = Console(record=True, width=300)
    go(taxonomy, tmp_path / "run", console)
    assert rec.ran() == ["evaluate", "report"]
    assert (
        f"heldout/{heldout.relative_to(taxonomy.parent / 'heldout').as_posix()} (changed)"
        in console.export_text()
    )

    doc = taxonomy / "knowledge" / "history" / "quillmarrow_island" / "quillmarrow_island.md"
    doc.write_text(doc.read_text() + "\nOne more fact.\n")
    go(taxonomy, tmp_path / "run", overrides={"train.epochs": 5})
    assert rec.ran() == ["generate", "train", "evaluate", "report"]

    console = Console(record=True, width=300)
    go(taxonomy, tmp_path / "run", console, overrides={"train.epochs": 4})
    assert rec.ran() == ["train", "evaluate", "report"]
    assert "train.epochs: 5 -> 4" in console.export_text()

    # Exporting a GGUF is the report stage's work: asking for another one never retrains.
    go(taxonomy, tmp_path / "run", overrides={"train.epochs": 4, "train.export_gguf": "f16"})
    assert rec.ran() == ["report"]


def test_from_redoes_that_stage_and_everything_after(
    monkeypatch: pytest.MonkeyPatch, taxonomy: Path, tmp_path: Path
) -> None:
    rec = Recorder(monkeypatch)
    go(taxonomy, tmp_path / "run")
    rec.ran()
    go(taxonomy, tmp_path / "run", from_stage="train")
    assert rec.ran() == ["train", "evaluate", "report"]
    with pytest.raises(LabalignError, match="unknown stage 'trian'"):
        go(taxonomy, tmp_path / "run", from_stage="trian")


def test_a_failed_stage_is_recorded_and_retried(
    monkeypatch: pytest.MonkeyPatch, taxonomy: Path, tmp_path: Path
) -> None:
    rec = Recorder(monkeypatch)
    rec.fail["generate"] = LabalignError("teacher unreachable", hint="start it")
    with pytest.raises(LabalignError, match="teacher unreachable"):
        go(taxonomy, tmp_path / "run")
    manifest = load_manifest(tmp_path / "run")
    assert manifest is not None
    assert manifest.stage("generate").status == "failed"
    assert "teacher unreachable" in (manifest.stage("generate").error or "")
    rec.ran()
    go(taxonomy, tmp_path / "run")
    assert rec.ran() == ["generate (resume)", "train", "evaluate", "report"]


def test_invalid_taxonomy_fails_validation_without_running_anything(
    monkeypatch: pytest.MonkeyPatch, taxonomy: Path, tmp_path: Path
) -> None:
    rec = Recorder(monkeypatch)
    qna = next(taxonomy.rglob("qna.yaml"))
    qna.write_text(qna.read_text().replace("version: 3", "version: 99"))
    with pytest.raises(LabalignError, match="1 error in the taxonomy") as info:
        go(taxonomy, tmp_path / "run")
    assert Path(str(info.value.path)) == qna
    assert rec.ran() == ["report"]  # nothing ran, but the report shows the validation problems
    manifest = load_manifest(tmp_path / "run")
    assert manifest is not None and manifest.stage("validate").status == "failed"
    assert (tmp_path / "run" / "validation.json").is_file()


def test_one_run_per_directory(monkeypatch: pytest.MonkeyPatch, taxonomy: Path, tmp_path: Path) -> None:
    import fcntl

    Recorder(monkeypatch)
    (tmp_path / "run").mkdir()
    with (tmp_path / "run" / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        with pytest.raises(LabalignError, match="another labalign run"):
            go(taxonomy, tmp_path / "run")


def test_run_and_generate_never_write_the_same_data_folder_at_once(
    monkeypatch: pytest.MonkeyPatch, taxonomy: Path, tmp_path: Path
) -> None:
    """A `labalign generate --out RUN/data` at work stops the run's generate stage before it starts, with
    the one-line error; once it is gone the run generates."""
    rec = Recorder(monkeypatch)
    with locked(tmp_path / "run" / "data", what=GENERATE_LOCK):  # as `labalign generate` holds it
        with pytest.raises(LabalignError, match="another labalign generate or run is working") as info:
            go(taxonomy, tmp_path / "run")
        assert Path(str(info.value.path)) == tmp_path / "run" / "data"
        assert rec.ran() == ["report"]  # generate never started; the report shows why
    go(taxonomy, tmp_path / "run")
    assert rec.ran()[0].startswith("generate")


def test_report_warns_of_a_final_it_cannot_export_not_of_one_never_trained(
    monkeypatch: pytest.MonkeyPatch, taxonomy: Path, tmp_path: Path
) -> None:
    """A run stopped before training ends still renders its report: the GGUF export has nothing to do
    then and says nothing; a final/ that is not a full model (an adapter) is worth a warning."""
    import labalign.report

    monkeypatch.setattr(labalign.report, "render_report", lambda run_dir: run_dir / "report.html")
    out = io.StringIO()
    profile = get_profile("quick")
    ctx = stages.RunContext(
        run_dir=tmp_path / "run",
        taxonomy=taxonomy,
        settings=load_settings(defaults=profile.settings),
        profile=profile,
        student="default",
        eval_judge=None,
        console=Console(file=out, width=200),
    )
    assert ctx.settings.train.export_gguf is not None
    assert stages.report(ctx).gguf is None
    assert out.getvalue() == ""
    final = tmp_path / "run" / "train" / "final"
    final.mkdir(parents=True)
    (final / "adapter_config.json").write_text("{}")
    assert stages.report(ctx).gguf is None
    assert "no GGUF export" in out.getvalue() and "LoRA adapter" in out.getvalue()


def test_damaged_manifest_is_a_one_line_error(taxonomy: Path, tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "manifest.json").write_text('{"stages": ')
    with pytest.raises(LabalignError, match="manifest is damaged") as info:
        go(taxonomy, tmp_path / "run")
    assert Path(str(info.value.path)) == tmp_path / "run" / "manifest.json"


def test_plan_when_nothing_ran_yet() -> None:
    from labalign.manifest import Manifest

    plans = plan_stages(Manifest(), {s: "x" for s in ("generate", "train", "evaluate", "report")}, None)
    assert [(p.stage, p.action) for p in plans] == [
        ("generate", "run"),
        ("train", "run"),
        ("evaluate", "run"),
        ("report", "run"),
    ]


def test_profiles_sit_below_flags() -> None:
    profile = get_profile("quick")
    s = load_settings(overrides={"sdg.samples_per_leaf": 3}, defaults=profile.settings)
    assert s.sdg.samples_per_leaf == 3
    assert s.train.phase1_epochs == profile.settings["train.phase1_epochs"]
    with pytest.raises(LabalignError, match="unknown profile"):
        get_profile("huge")


def test_profile_summary_names_the_fp32_pace_on_a_cpu_without_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import labalign.llm.hf as hf

    quick = get_profile("quick")
    assert quick.fp32_cpu_summary is not None and "fp32" in quick.fp32_cpu_summary
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(hf, "native_bf16", lambda device: False)
    assert quick.summary_here() == quick.fp32_cpu_summary
    assert get_profile("standard").summary_here() == get_profile("standard").summary  # has none
    monkeypatch.setattr(hf, "native_bf16", lambda device: True)
    assert quick.summary_here() == quick.summary
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(hf, "native_bf16", lambda device: False)
    assert quick.summary_here() == quick.summary  # a GPU: the CPU's pace says nothing


def test_cli_missing_taxonomy_is_one_line_and_creates_nothing(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from labalign.cli import app

    result = CliRunner().invoke(app, ["run", str(tmp_path / "nope"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert "taxonomy folder not found" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()
