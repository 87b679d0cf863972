"""The command line: exit codes, output formats, one-line errors, never a traceback."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from labalign.cli import app
from tests.taxonomy_fixtures import SKILL

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "taxonomy"
runner = CliRunner()


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def write_skill(root: Path, text: str = SKILL, name: str = "compositional_skills/poems") -> Path:
    path = root / name / "qna.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_version_and_help() -> None:
    code, out = run("--version")
    assert code == 0 and out.startswith("labalign ")
    for group in ("taxonomy", "documents", "config"):
        code, out = run(group, "--help")
        assert code == 0 and "Usage" in out


def _command_paths() -> list[list[str]]:
    """Every leaf command of the real CLI tree, so a new command cannot skip its example."""
    import typer.main

    paths: list[list[str]] = []

    def walk(command: Any, prefix: list[str]) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for name, sub in subcommands.items():
                walk(sub, [*prefix, name])
        else:
            paths.append(prefix)

    walk(typer.main.get_command(app), [])
    return paths


def test_command_tree_is_complete() -> None:
    names = {" ".join(p) for p in _command_paths()}
    assert {"taxonomy validate", "documents chunk", "config show", "generate", "data show", "serve"} <= names


@pytest.mark.parametrize("command", _command_paths(), ids=lambda p: " ".join(p))
def test_every_command_help_has_an_example(command: list[str]) -> None:
    code, out = run(*command, "--help")
    assert code == 0 and "Example:" in out, out


def test_validate_examples_text_and_json() -> None:
    code, out = run("taxonomy", "validate", str(EXAMPLES), "--strict")
    assert code == 0, out
    assert "0 errors in 3 files" in out
    code, out = run("taxonomy", "validate", str(EXAMPLES), "--format", "json")
    data = json.loads(out)
    assert data["errors"] == 0
    assert {f["path"] for f in data["files"]} == {
        "knowledge/history/quillmarrow_island/qna.yaml",
        "compositional_skills/writing/formal_business_rewrite/qna.yaml",
        "compositional_skills/grounded/extraction/meeting_action_items/qna.yaml",
    }
    assert all(set(f) == {"path", "errors", "warnings"} for f in data["files"])


def test_validate_reports_problem_lines_and_exit_1(tmp_path: Path) -> None:
    write_skill(tmp_path, SKILL.replace("created_by: alice\n", "") + "colour: red\n")
    code, out = run("taxonomy", "validate", str(tmp_path))
    assert code == 1
    assert "compositional_skills/poems/qna.yaml:1:1: [.] error: missing required key 'created_by'" in out
    assert "compositional_skills/poems/qna.yaml:15:1: [.colour] error: unknown key 'colour'" in out
    assert "2 errors in 1 files" in out
    code, out = run("taxonomy", "validate", str(tmp_path), "--format", "json")
    data = json.loads(out)
    assert code == 1 and data["errors"] == 2
    assert data["files"][0]["errors"][1] == {
        "line": 15,
        "column": 1,
        "yaml_path": ".colour",
        "message": "unknown key 'colour'; allowed keys: created_by, seed_examples, task_description, version",
    }


def test_validate_missing_path_is_one_line(tmp_path: Path) -> None:
    code, out = run("taxonomy", "validate", str(tmp_path / "nope"))
    assert code == 1 and "no such file or folder" in out and "Traceback" not in out


def test_list_and_show_examples() -> None:
    code, out = run("taxonomy", "list", "-t", str(EXAMPLES), "--format", "json")
    assert code == 0
    kinds = {leaf["leaf"]: leaf["type"] for leaf in json.loads(out)["leaves"]}
    assert kinds["knowledge/history/quillmarrow_island"] == "knowledge"
    code, out = run("taxonomy", "list", "-t", str(EXAMPLES))
    assert code == 0 and "3 leaves" in out
    code, out = run(
        "taxonomy", "show", "knowledge/history/quillmarrow_island", "-t", str(EXAMPLES), "--format", "json"
    )
    assert code == 0, out
    shown = json.loads(out)
    assert shown["type"] == "knowledge" and len(shown["seed_examples"]) == 5
    assert shown["documents"] and shown["documents"][0].endswith("quillmarrow_island.md")
    code, out = run("taxonomy", "show", "knowledge/nope", "-t", str(EXAMPLES))
    assert code == 1 and "no leaf named 'knowledge/nope'" in out


def _commands(command: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, f"{path} {name}".strip())
    if not hasattr(command, "commands"):
        yield path, command


def test_every_option_has_help_and_a_conventional_type() -> None:
    import typer.main

    root = typer.main.get_command(app)
    problems = []
    for path, command in _commands(root):
        for param in command.params:
            if param.param_type_name == "option" and not (param.help or "").strip():
                problems.append(f"{path} {param.opts[0]}: no help text")
        code, out = run(*path.split(), "--help")
        assert code == 0, (path, out)
        # Python annotations such as <list[Path]>, <int range> or <bool> are not what users read.
        problems += [
            f"{path}: {word}" for word in re.findall(r"<(?:list\[\w+\]|int|float|str|bool|path)[^>]*>", out)
        ]
    assert not problems, problems


def test_taxonomy_is_the_first_positional_everywhere(tmp_path: Path) -> None:
    # The same answer with the taxonomy as the argument and with the -t alias (older scripts).
    code, positional = run("taxonomy", "list", str(EXAMPLES), "--format", "json")
    assert code == 0 and json.loads(positional) == json.loads(
        run("taxonomy", "list", "-t", str(EXAMPLES), "--format", "json")[1]
    )
    leaf = "knowledge/history/quillmarrow_island"
    code, out = run("taxonomy", "show", str(EXAMPLES), leaf, "--format", "json")
    assert code == 0 and json.loads(out)["leaf"] == leaf
    code, out = run("documents", "chunk", str(EXAMPLES), leaf, "--format", "json")
    assert code == 0 and json.loads(out), out
    # Two different roots, or three positionals: one line, exit 1.
    code, out = run("taxonomy", "list", str(EXAMPLES), "-t", str(tmp_path))
    assert code == 1 and "two taxonomies given" in out and "Traceback" not in out
    code, out = run("taxonomy", "show", str(EXAMPLES), leaf, "extra")
    assert code == 1 and "expected [TAXONOMY] LEAF" in out


def test_diff_non_git_folder_validates(tmp_path: Path) -> None:
    write_skill(tmp_path)
    code, out = run("taxonomy", "diff", str(tmp_path), "--format", "json")
    data = json.loads(out)
    assert code == 0 and data["changed"] == ["compositional_skills/poems/qna.yaml"]
    assert data["validation"]["errors"] == 0


def test_config_init_and_show(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _ = run("config", "init")
    assert code == 0 and (tmp_path / "labalign.yaml").is_file()
    code, out = run("config", "init")
    assert code == 1 and "already exists" in out
    monkeypatch.setenv("LABALIGN_TEACHER__MODEL", "http://localhost:8000/v1")
    code, out = run("config", "show", "--format", "json")
    assert code == 0 and json.loads(out)["teacher"]["model"] == "http://localhost:8000/v1"
    (tmp_path / "other.yaml").write_text("teacher:\n  context_window: 1\n")
    code, out = run("--config", str(tmp_path / "other.yaml"), "config", "show")
    assert code == 1 and "other.yaml:2:3" in out


def test_real_process_prints_one_line_error_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher: [\n")
    done = subprocess.run(
        [sys.executable, "-m", "labalign", "--config", str(bad), "config", "show"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "bad.yaml:2:1" in done.stderr


def test_generate_with_a_profile_makes_the_data_run_makes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Both commands stop at the teacher's first call; what they would generate must be the same.
    import labalign.cli.generate as generate_cli
    import labalign.sdg.driver as driver
    from labalign.errors import LabalignError

    asked: list[tuple[str, str]] = []

    async def first_call(jobs: Any, teacher: Any, judge: Any, out: Path, options: Any, console: Any) -> Any:
        asked.append((repr(options), repr([(j.leaf.name, j.document) for j in jobs])))
        raise LabalignError("stopped before the teacher")

    for module in (driver, generate_cli):
        monkeypatch.setattr(module, "run_generation", first_call)
        monkeypatch.setattr(module, "open_teacher", lambda *a, **k: object())
    monkeypatch.setenv("LABALIGN_CACHE_DIR", str(tmp_path / "cache"))
    code, out = run("generate", str(EXAMPLES), "--profile", "quick", "--out", str(tmp_path / "data"))
    assert code == 1 and "stopped before the teacher" in out
    code, out = run("run", str(EXAMPLES), "--out", str(tmp_path / "run"))
    assert code == 1 and "stopped before the teacher" in out, out
    code, out = run("generate", str(EXAMPLES), "--out", str(tmp_path / "plain"))
    assert len(asked) == 3
    assert asked[0] == asked[1], "generate --profile quick and run (quick) would write different data"
    assert asked[2] != asked[0], "without --profile, generate uses the settings alone"
    code, out = run("generate", str(EXAMPLES), "--profile", "nope", "--out", str(tmp_path / "x"))
    assert code == 1 and "unknown profile 'nope'" in out
