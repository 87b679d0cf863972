"""`labalign train` on the command line: the interface, one-line errors, --model default, relaunch args."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from labalign.cli.train import standalone_app
from labalign.train import TrainConfig
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


def test_relaunch_args_repeat_the_command_without_nproc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "x.yaml"
    config.write_text("# defaults\n")
    captured: list[list[str]] = []
    app = standalone_app()

    def fake_launch(nproc: int, argv: list[str]) -> int:
        captured.append([str(nproc), *argv])
        return 0

    monkeypatch.setattr("labalign.train.distributed.launch", fake_launch)
    args = ["--config", str(config), "train", "--phase1", "a.jsonl", "--out", "o", "--lora", "--epochs", "3",
            "--nproc", "2", "--no-progress", "--bf16", "off", "--distributed", "fsdp"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    argv = captured[0]
    assert argv[0] == "2" and "--nproc" not in argv
    assert argv[1:4] == ["--config", str(config), "train"]
    for expected in (
        ["--phase1", "a.jsonl"],
        ["--epochs", "3"],
        ["--bf16", "off"],
        ["--model", "default"],
        ["--distributed", "fsdp"],
    ):
        i = argv.index(expected[0])
        assert argv[i : i + 2] == expected
    assert "--lora" in argv and "--no-progress" in argv and "--resume" not in argv


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
