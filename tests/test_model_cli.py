"""`labalign model convert` and `labalign model list` (on a tiny GGUF; the cache is a temp folder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

pytest.importorskip("transformers", reason="needs torch and transformers (the hf extra)")

from labalign import cli
from labalign.cli import model as model_cli
from labalign.paths import default_cache_dir
from tests.tiny_models import tiny_llama_dir, tiny_llama_gguf

runner = CliRunner()


def _app() -> typer.Typer:
    """The real root app once `model` is registered there; until then a root with the same error handling."""
    if any(group.typer_instance is model_cli.app for group in cli.app.registered_groups):
        return cli.app
    root = typer.Typer(cls=cli._Group)
    root.add_typer(model_cli.app)

    @root.callback()
    def _root() -> None:
        pass

    return root


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(_app(), ["model", *args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    return tiny_llama_gguf(root / "tiny.gguf", model_dir=tiny_llama_dir(root / "hf"))


def test_help_has_examples() -> None:
    for command in ("convert", "list"):
        code, out = run(command, "--help")
        assert code == 0 and "Example:" in out


def test_convert_then_reuse(gguf: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    code, out = run("convert", str(gguf), str(out_dir))
    assert code == 0, out
    assert "converted tiny.gguf" in out
    assert (out_dir / "model.safetensors").is_file()
    code, out = run("convert", str(gguf), str(out_dir), "--format", "json")
    assert code == 0, out
    data = json.loads(out)
    assert data["skipped"] is True and data["out_dir"] == str(out_dir) and len(data["gguf_sha256"]) == 64


def test_convert_errors_are_one_line(tmp_path: Path) -> None:
    code, out = run("convert", str(tmp_path / "missing.gguf"), str(tmp_path / "out"))
    assert code == 1
    assert out.strip().startswith("error:") and "no such GGUF file" in out
    assert "Traceback" not in out and len(out.strip().splitlines()) == 1


def test_list_shows_the_default_model_and_conversions(gguf: Path) -> None:
    code, out = run("list", "--format", "json")
    assert code == 0, out
    rows = json.loads(out)
    assert rows[0]["name"] == "default" and rows[0]["format"] == "gguf"
    assert rows[0]["path"].startswith(str(default_cache_dir()))
    assert rows[0]["assembled"] is False  # each test has a fresh cache
    assert [r for r in rows if r["format"] == "hf"] == []

    code, out = run("convert", str(gguf))  # no OUT_DIR: into the cache
    assert code == 0, out
    rows = json.loads(run("list", "--format", "json")[1])
    converted = [r for r in rows if r["format"] == "hf"]
    assert len(converted) == 1
    assert converted[0]["source_gguf"] == str(gguf.resolve())
    assert converted[0]["size"] > 10_000
    assert converted[0]["name"].startswith("tiny-")

    code, out = run("list")
    assert code == 0
    assert "default" in out and "converted from" in out and "hf/tiny-" in out
