"""`labalign chat`: one-shot answers for scripts, and the interactive loop with history and commands."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from labalign.llm.types import GenerationParams, LLMRequest, Message
from tests.llm_fakes import ScriptedBackend, cli_app, patch_resolver

runner = CliRunner()


@pytest.fixture
def backend(monkeypatch: pytest.MonkeyPatch) -> ScriptedBackend:
    return patch_resolver(monkeypatch)[0]


def answer_to(*messages: Message, max_tokens: int = 512) -> str:
    request = LLMRequest(messages=messages, params=GenerationParams(max_tokens=max_tokens))
    return ScriptedBackend.answer(request)[0]


def test_question_mode_prints_the_answer_and_exits_0(monkeypatch: pytest.MonkeyPatch) -> None:
    backend, opened = patch_resolver(monkeypatch)
    result = runner.invoke(
        cli_app(),
        [
            "chat",
            "my-model",
            "-q",
            "what is LAB",
            "--system",
            "be terse",
            "--max-tokens",
            "50",
            "--temperature",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == answer_to(Message("user", "what is LAB")) + "\n"
    (request,) = backend.seen
    assert request.messages == (Message("system", "be terse"), Message("user", "what is LAB"))
    assert request.params.max_tokens == 50 and request.params.temperature == 0.0
    assert opened == ["my-model"] and backend.closed


def test_question_mode_failure_is_one_line_exit_1(backend: ScriptedBackend) -> None:
    result = runner.invoke(cli_app(), ["chat", "m", "-q", "fail:timeout"])
    assert result.exit_code == 1
    assert "error:" in result.stderr and "timeout" in result.stderr and "Traceback" not in result.output
    assert backend.closed


def test_interactive_history_reset_and_exit(backend: ScriptedBackend) -> None:
    script = "hello\nagain please\n/reset\nthird\n/nope\n\n/exit\nnever sent\n"
    result = runner.invoke(cli_app(), ["chat", "m", "--system", "sys"], input=script)
    assert result.exit_code == 0, result.output
    first, second, third = backend.seen
    system = Message("system", "sys")
    assert first.messages == (system, Message("user", "hello"))
    assert second.messages == (
        system,
        Message("user", "hello"),
        Message("assistant", answer_to(Message("user", "hello"))),
        Message("user", "again please"),
    )
    assert third.messages == (system, Message("user", "third"))  # /reset forgot the first two turns
    out = result.stdout
    assert answer_to(Message("user", "again please")) in out and "conversation cleared" in out
    assert "unknown command /nope" in out and "never sent" not in "".join(
        str(r.messages) for r in backend.seen
    )
    assert backend.closed


def test_interactive_ends_on_eof_and_survives_errors(backend: ScriptedBackend) -> None:
    result = runner.invoke(cli_app(), ["chat", "m"], input="fail:context_length\nstill here\n")
    assert result.exit_code == 0, result.output
    assert "error:" in result.stdout and "/reset" in result.stdout
    assert [r.messages for r in backend.seen][-1] == (Message("user", "still here"),)  # failed turn dropped
    assert answer_to(Message("user", "still here")) in result.stdout
    assert backend.closed


def test_help_has_examples() -> None:
    for command in ("chat", "serve"):
        result = runner.invoke(cli_app(), [command, "--help"])
        assert result.exit_code == 0 and "Example:" in result.output
