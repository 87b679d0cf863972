"""`labalign run` end to end in a subprocess: a scripted teacher behind a real local OpenAI-compatible
server, a tiny random student, SIGKILL in the middle of training, then the same command again: it
resumes training where it stopped (generation is not redone) and finishes with a report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from labalign.serve.app import create_app
from tests.llm_fakes import ServerThread
from tests.sdg_fakes import ScriptedTeacher
from tests.tiny_models import tiny_llama_dir

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "taxonomy"


def _env(cache: Path) -> dict[str, str]:
    return {
        **os.environ,
        "OPENAI_API_KEY": "unused",
        "COLUMNS": "120",
        "LABALIGN_CACHE_DIR": str(cache),
        "LABALIGN_SDG__MAX_CHUNKS": "2",
        "LABALIGN_TRAIN__MAX_SEQ_LEN": "256",
        "LABALIGN_TRAIN__LONG_SAMPLES": "truncate",
        "LABALIGN_TRAIN__MAX_BATCH_TOKENS": "512",
        "LABALIGN_TRAIN__BATCH_SIZE": "2",
        "LABALIGN_TRAIN__SAVE_EVERY": "1",
        # General replay written by the student itself, anchored by the KL term (as the quick profile).
        "LABALIGN_TRAIN__REPLAY_RATIO": "0.3",
        "LABALIGN_TRAIN__KL_WEIGHT": "1",
        "LABALIGN_TRAIN__GENERAL_REPLAY_SAMPLES": "1",
        "LABALIGN_TRAIN__GENERAL_REPLAY_TOKENS": "24",
    }


def _checkpoints(run: Path) -> list[Path]:
    return sorted((run / "train").glob("phase*/state/*"))


def test_run_killed_mid_training_resumes_and_reports(tmp_path: Path) -> None:
    student = tiny_llama_dir(tmp_path / "student", max_position_embeddings=2048)
    run = tmp_path / "run"
    teacher = ScriptedTeacher()
    with ServerThread(create_app(teacher, model_name="scripted", api_key=None)) as url:
        command = [
            sys.executable,
            "-m",
            "labalign",
            "run",
            str(EXAMPLES),
            "--out",
            str(run),
            "--teacher",
            f"{url}/v1",
            "--student",
            str(student),
            "--samples-per-leaf",
            "3",
        ]
        proc = subprocess.Popen(
            command, env=_env(tmp_path / "cache"), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 240
        while not _checkpoints(run):
            if proc.poll() is not None:
                _, err = proc.communicate()
                raise AssertionError(
                    f"run ended before a checkpoint (exit {proc.returncode}): {err[-3000:]!r}"
                )
            assert time.monotonic() < deadline, "no training checkpoint in time"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["stages"]["generate"]["status"] == "done"
        assert manifest["stages"]["train"]["status"] == "running"
        calls = teacher.calls

        done = subprocess.run(
            command, env=_env(tmp_path / "cache"), capture_output=True, text=True, timeout=600, check=False
        )
        assert done.returncode == 0, done.stderr[-3000:]
    assert teacher.calls == calls  # generation was done: no teacher call again
    manifest = json.loads((run / "manifest.json").read_text())
    stages = manifest["stages"]
    assert {s: stages[s]["status"] for s in stages} == dict.fromkeys(stages, "done")
    assert stages["generate"]["attempts"] == 1 and stages["train"]["attempts"] == 2
    assert "(resuming)" in done.stderr and "generate: done, skipped" in done.stderr
    assert (run / "train" / "final" / "config.json").is_file()
    assert (run / "train" / "final" / "tokenizer_config.json").is_file()
    results = json.loads((run / "eval" / "results.json").read_text())
    assert "branch" in results["evaluations"] and "forgetting" in results["evaluations"]
    # MMLU-branch: multiple choice from the document, base and tuned.
    assert results["evaluations"]["mmlu_branch"]["n"] > 0
    html = (run / "report.html").read_text()
    assert "quillmarrow_island" in html and "labalign chat" in html
    # The quick profile hands the model on as a GGUF file too (train.export_gguf q8_0).
    assert (
        run / "train" / "final.gguf"
    ).is_file() and f"labalign serve {run / 'train' / 'final.gguf'}" in html
    assert "run summary" in done.stdout
    log = [json.loads(line) for line in (run / "train" / "training_log.jsonl").read_text().splitlines()]
    steps = [(r["phase"], r["step"]) for r in log if r.get("event") == "train"]
    assert len(steps) == len(set(steps))  # resumed, not restarted: no step logged twice
    replay = (run / "data" / "general_replay.jsonl").read_text().splitlines()
    assert len(replay) > 100 and json.loads(replay[0])["messages"][0]["role"] == "pretraining"
    assert stages["train"]["summary"]["general_replay"]["misses"] == 0  # the resumed run asked the cache
    summary = json.loads((run / "train" / "summary.json").read_text())
    assert all(p["data"]["replay_samples"] > 0 and p["general_ratio"] for p in summary["phases"])
