"""`labalign train` on the command line: the interface, one-line errors, --model default, --nproc."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from labalign.train.phases import TrainConfig
from labalign.train.summary import TrainResult
from tests.test_train_helpers import make_records, tiny_model_dir, write_jsonl

runner = CliRunner()


def _app() -> typer.Typer:
    """The full CLI, where `train` is registered."""
    from labalign.cli import app

    return app


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("cli")
    model = tiny_model_dir(root / "model")
    return (
        model,
        write_jsonl(root / "a.jsonl", make_records(12, seed=1)),
        write_jsonl(root / "b.jsonl", make_records(12, seed=2)),
    )


def test_help_has_an_example() -> None:
    result = runner.invoke(_app(), ["train", "--help"])
    assert result.exit_code == 0 and "Example:" in result.output and "--phase1" in result.output


def test_default_model_interface(
    files: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command outside checks run: --model default resolves through the LLM layer's default model."""
    model, a, b = files
    asked: list[Path] = []
    fake = types.ModuleType("labalign.llm.default_model")

    def default_hf_dir(cache_dir: Path) -> Path:
        asked.append(cache_dir)
        return model

    fake.default_hf_dir = default_hf_dir  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "labalign.llm.default_model", fake)
    out = tmp_path / "run"
    args = ["train", "--model", "default", "--phase1", str(a), "--phase2", str(b), "--out", str(out),
            "--lora", "--epochs", "1", "--max-seq-len", "128", "--no-progress"]  # fmt: skip
    result = runner.invoke(_app(), args)
    assert result.exit_code == 0, result.output
    assert (out / "final" / "config.json").is_file() and (out / "final" / "tokenizer.json").is_file()
    assert asked and asked[0].name == "labalign"  # the settings' cache_dir (XDG_CACHE_HOME/labalign)
    assert (
        "training summary" in result.output
        and "phase2" in result.output
        and "final checkpoint" in result.output
    )


def test_json_output(files: tuple[Path, Path, Path], tmp_path: Path) -> None:
    model, a, _ = files
    out = tmp_path / "run"
    args = ["train", "--model", str(model), "--phase1", str(a), "--out", str(out), "--epochs", "1",
            "--strategy", "stacked", "--format", "json", "--no-progress"]  # fmt: skip
    result = runner.invoke(_app(), args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [p["phase"] for p in data["phases"]] == ["stacked"] and data["final"] == str(out / "final")


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "a.jsonl: data file not found (check --phase1)"),
        ('{"messages": [{"role": "user", "content": "q"}]}\nnot json\n', "a.jsonl:1: no assistant turn"),
        (
            '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n{\n',
            "a.jsonl:2:2: not valid JSON",
        ),
    ],
)
def test_bad_input_is_one_line(
    files: tuple[Path, Path, Path], tmp_path: Path, content: str | None, needle: str
) -> None:
    model = files[0]
    data = tmp_path / "a.jsonl"
    if content is not None:
        data.write_text(content)
    result = runner.invoke(
        _app(), ["train", "--model", str(model), "--phase1", str(data), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], result.output
    assert not (tmp_path / "o").exists()  # nothing written for a run that could not start


def test_bad_flag_combination(files: tuple[Path, Path, Path], tmp_path: Path) -> None:
    model, a, _ = files
    args = ["train", "--model", str(model), "--phase1", str(a), "--out", str(tmp_path / "o"), "--max-seq-len",
            "512", "--max-batch-tokens", "256"]  # fmt: skip
    result = runner.invoke(_app(), args)
    assert result.exit_code == 1 and "max_batch_tokens" in result.output and "flags" in result.output
    assert "setting 'train':" in result.output  # a rule across settings, not one field
    adapter = [*args[:7], "--lora", "--no-merge-lora", "--interpolation", "0.5"]
    result = runner.invoke(_app(), adapter)
    assert result.exit_code == 1 and "needs merged weights" in result.output
    assert not (tmp_path / "o").exists()


def test_nproc_hands_the_typed_config_to_launch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--nproc goes to labalign.train.launch with the flags already in the typed config: the library
    never rebuilds a command line for the CLI."""
    config = tmp_path / "x.yaml"
    config.write_text("train:\n  learning_rate: 0.001\n")
    captured: list[tuple[TrainConfig, int]] = []

    def fake_launch(train_config: TrainConfig, nproc: int = 1) -> TrainResult:
        captured.append((train_config, nproc))
        out = train_config.out
        return TrainResult(
            out=out, final=out / "final", phases=[], log=out / "l", plot=out / "p", summary=out / "s"
        )

    monkeypatch.setattr("labalign.train.launch.launch", fake_launch)
    args = ["--config", str(config), "train", "--phase1", "a.jsonl", "--out", "o", "--lora", "--epochs", "3",
            "--nproc", "2", "--no-progress", "--bf16", "off", "--distributed", "fsdp"]  # fmt: skip
    result = runner.invoke(_app(), args)
    assert result.exit_code == 0, result.output
    ((train_config, nproc),) = captured
    assert nproc == 2
    s = train_config.settings
    assert (s.lora, s.epochs, s.bf16, s.distributed, s.learning_rate) == (True, 3, "off", "fsdp", 0.001)
    assert train_config.phase1 == Path("a.jsonl") and train_config.model == "default"
    assert not train_config.resume and not train_config.show_progress


def test_the_launch_config_crosses_into_the_worker(tmp_path: Path) -> None:
    """What launch writes for the worker processes reads back as the same TrainConfig; a damaged one is
    a one-line error with exit code 1."""
    from labalign.settings.train import TrainSettings
    from labalign.train.launch import LaunchConfig
    from labalign.train.worker import main

    original = TrainConfig(
        model="m", out=tmp_path / "o", phase1=tmp_path / "a.jsonl", replay=tmp_path / "r.jsonl",
        settings=TrainSettings(lora=True, interpolation="auto", replay_ratio=0.5), resume=True,
        cache_dir=tmp_path / "cache", show_progress=False,
    )  # fmt: skip
    text = LaunchConfig.of(original).model_dump_json()
    assert LaunchConfig.model_validate_json(text).train_config() == original
    bad = tmp_path / "launch.json"
    bad.write_text("{not json")
    assert main([str(bad)]) == 1


def test_distributed_flag_sets_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """--distributed overrides the config's train.distributed; an unknown mode is refused by name."""
    monkeypatch.setenv("LABALIGN_TRAIN__DISTRIBUTED", "ddp")
    seen: list[str] = []

    def fake_train(config: TrainConfig) -> None:
        seen.append(config.settings.distributed)
        raise typer.Exit(0)

    monkeypatch.setattr("labalign.train.phases.train", fake_train)
    base = ["train", "--phase1", "a.jsonl", "--out", "o", "--no-progress"]
    assert runner.invoke(_app(), base).exit_code == 0
    assert runner.invoke(_app(), [*base, "--distributed", "fsdp"]).exit_code == 0
    assert seen == ["ddp", "fsdp"]
    result = runner.invoke(_app(), [*base, "--distributed", "zero3"])
    assert result.exit_code == 2 and "zero3" in result.output


def test_an_empty_phase_file_is_skipped_with_a_warning(
    files: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """A taxonomy without knowledge leaves generates an empty phase1.jsonl: train phase 2 alone."""
    model, _, phase2 = files
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    out = tmp_path / "run"
    args = ["train", "--model", str(model), "--phase1", str(empty), "--phase2", str(phase2), "--out",
            str(out), "--epochs", "1", "--max-seq-len", "64", "--no-progress"]  # fmt: skip
    result = runner.invoke(_app(), args)
    assert result.exit_code == 0, result.output
    assert "phase1 is skipped" in result.output
    assert (out / "final" / "config.json").is_file() and not (out / "phase1").exists()


def test_profile_gives_the_runs_training_settings_under_config_and_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`train --profile quick` trains as `labalign run` would (its train.* settings); the config file and
    flags still win over it; an unknown profile is a one-line error naming the choices."""
    from labalign.run.profiles import get_profile

    quick = get_profile("quick").settings
    seen: list[TrainConfig] = []

    def fake_train(config: TrainConfig) -> None:
        seen.append(config)
        raise typer.Exit(0)

    monkeypatch.setattr("labalign.train.phases.train", fake_train)
    config = tmp_path / "x.yaml"
    config.write_text("train:\n  kl_weight: 3.0\n")
    base = ["train", "--phase1", "a.jsonl", "--out", "o", "--no-progress"]
    assert runner.invoke(_app(), [*base, "--profile", "quick", "--lora-rank", "8"]).exit_code == 0
    assert runner.invoke(_app(), ["--config", str(config), *base, "-p", "quick"]).exit_code == 0
    assert runner.invoke(_app(), base).exit_code == 0
    by_profile, under_config, plain = (c.settings for c in seen)
    assert by_profile.interpolation == quick["train.interpolation"] == "auto"
    assert (by_profile.phase1_epochs, by_profile.replay_ratio) == (
        quick["train.phase1_epochs"],
        quick["train.replay_ratio"],
    )
    assert by_profile.lora_rank == 8  # the flag over the profile's 32
    assert under_config.kl_weight == 3.0 and under_config.lora_rank == quick["train.lora_rank"]
    assert plain.interpolation != "auto" and plain.replay_ratio == 0  # no profile: the settings alone
    result = runner.invoke(_app(), [*base, "--profile", "huge"])
    assert result.exit_code == 1 and "unknown profile 'huge'" in result.output
    assert "quick" in result.output
