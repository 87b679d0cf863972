"""Credentials in a teacher or judge URL never reach the terminal, the run directory or a cache key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from labalign.cli import app
from labalign.errors import LabalignError
from labalign.llm.openai_backend import OpenAIBackend
from labalign.llm.types import LLMError
from labalign.redact import redact_argv, redact_data, redact_text

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SECRET = "S3cr3tT0ken"
URL = f"http://u:{SECRET}@127.0.0.1:9/v1"  # port 9: nothing listens, every request fails at once


def test_redact_text_masks_user_info_of_every_url() -> None:
    text = f"failed at {URL} and https://{SECRET}@host.example/x, ssh://git:{SECRET}@h/r.git"
    out = redact_text(text)
    assert SECRET not in out
    assert "http://***@127.0.0.1:9/v1" in out and "https://***@host.example/x" in out
    assert redact_text("mail me at a@b.example or see https://host/v1") == (
        "mail me at a@b.example or see https://host/v1"
    )


def test_redact_argv_and_data() -> None:
    argv = ["labalign", "run", "t", "--teacher", URL, "--api-key", SECRET, f"--token={SECRET}"]
    assert SECRET not in " ".join(redact_argv(argv))
    assert redact_argv(["--api-key", "k", "x"]) == ["--api-key", "***", "x"]
    data = redact_data({"models": {"teacher": URL}, "list": [URL, 3, None]})
    assert SECRET not in repr(data) and data["list"][1:] == [3, None]


def test_errors_and_backend_identity_are_redacted() -> None:
    exc = LabalignError(f"cannot reach {URL}", hint=f"check {URL}")
    assert SECRET not in str(exc) and SECRET not in exc.message
    assert SECRET not in LLMError("connection", f"GET {URL}/models failed").message
    backend = OpenAIBackend(URL, model="m")
    assert backend.base_url == URL  # the client still sends the credentials
    assert SECRET not in backend.identity  # but the request cache's key holds none


@pytest.fixture
def small_taxonomy(tmp_path: Path) -> Path:
    taxonomy = tmp_path / "taxonomy"
    leaf = "compositional_skills/writing/formal_business_rewrite"
    shutil.copytree(EXAMPLES / "taxonomy" / leaf, taxonomy / leaf)
    return taxonomy


@pytest.mark.parametrize("model_name", [None, "m"])  # None: the model list fails; "m": every request
def test_planted_secret_is_nowhere_in_the_run(
    small_taxonomy: Path, tmp_path: Path, model_name: str | None
) -> None:
    out = tmp_path / "run"
    env = {"LABALIGN_LLM__MAX_ATTEMPTS": "1", "LABALIGN_CACHE_DIR": str(tmp_path / "cache"), "COLUMNS": "300"}
    if model_name:
        env["LABALIGN_LLM__MODEL_NAME"] = model_name
    argv = ["run", str(small_taxonomy), "--out", str(out), "--teacher", URL, "--judge", URL]
    result = CliRunner().invoke(app, argv, env=env)
    assert result.exit_code == 1, result.output
    assert "127.0.0.1:9" in result.output or "every teacher call failed" in result.output
    assert "Traceback" not in result.output
    assert SECRET not in result.output  # ...without its credentials
    written = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "manifest.json" for p in written)
    for path in written:
        assert SECRET.encode() not in path.read_bytes(), path
