"""Kill `labalign generate` with SIGKILL mid-run, run the same command again: byte-identical output,
and no teacher answer that had already arrived is asked for again.

The teacher is a real OpenAI-compatible server on 127.0.0.1 (labalign's own `serve` app over a
scripted backend that answers slowly), reached through the request cache like any remote teacher.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from labalign.llm.types import LLMRequest, LLMResult, ResultCallback
from labalign.serve.app import create_app
from tests.llm_fakes import ServerThread
from tests.sdg_fakes import ScriptedTeacher, prompt_text

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "taxonomy"
FILES = ("phase1.jsonl", "phase2.jsonl", "heldout.jsonl")


class SlowCountingTeacher(ScriptedTeacher):
    """Answers after a short delay and counts how often each distinct request was asked."""

    def __init__(self) -> None:
        super().__init__(bad_every=0)
        self.asked: Counter[str] = Counter()

    async def generate(
        self, requests: Sequence[LLMRequest], *, on_result: ResultCallback | None = None
    ) -> list[LLMResult]:
        for r in requests:
            self.asked[f"{prompt_text(r)}|{r.params.seed}|{r.sample_index}"] += 1
        await asyncio.sleep(0.03)
        return await super().generate(requests, on_result=on_result)

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        yield self.answer(request)


def command(url: str, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "labalign",
        "generate",
        str(EXAMPLES),
        "--teacher",
        f"{url}/v1",
        "--out",
        str(out),
        "--samples-per-leaf",
        "4",
        "--seed",
        "3",
    ]


def env() -> dict[str, str]:
    return {
        **os.environ,
        "LABALIGN_SDG__MAX_CHUNKS": "2",
        "LABALIGN_LLM__MAX_CONCURRENCY": "4",
        "OPENAI_API_KEY": "unused",
        "COLUMNS": "120",
    }


def test_sigkill_then_rerun_gives_identical_output_without_repeating_answers(tmp_path: Path) -> None:
    teacher = SlowCountingTeacher()
    out = tmp_path / "resumed"
    # One server for both runs: its URL is part of the teacher's identity in the records.
    with ServerThread(create_app(teacher, model_name="scripted", api_key=None)) as url:
        done = subprocess.run(
            command(url, tmp_path / "ref"),
            env=env(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        total = sum(teacher.asked.values())
        assert total > 40 and max(teacher.asked.values()) == 1
        teacher.asked.clear()

        proc = subprocess.Popen(
            command(url, out), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 120
        while sum(teacher.asked.values()) < total // 3:
            assert proc.poll() is None, "generate finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        before_kill = sum(teacher.asked.values())
        assert not (out / "phase1.jsonl").exists()  # killed mid-run: nothing final written yet
        done = subprocess.run(
            command(url, out), env=env(), capture_output=True, text=True, timeout=300, check=False
        )
        assert done.returncode == 0, done.stderr[-2000:]
    for name in FILES:
        assert (out / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name
    repeated = sum(n - 1 for n in teacher.asked.values() if n > 1)
    # Only requests in flight at the kill (at most the concurrency, 4) may be asked again.
    assert repeated <= 4, repeated
    assert sum(teacher.asked.values()) <= total + 4 and before_kill < total
    stats = json.loads((out / "stats.json").read_text())
    assert stats["phase1_records"] > 0 and stats["phase2_records"] > 0
