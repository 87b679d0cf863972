"""Real processes: a run killed with SIGKILL mid-phase resumes exactly where it stopped, and a 2-process
data-parallel run (gloo on CPU) matches the single-process run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from labalign.train import TrainConfig, TrainSettings, train
from labalign.train.trainlog import read_log
from tests.test_train_helpers import make_records, tiny_model_dir, write_jsonl

TIMING_FIELDS = {"tokens_per_s", "elapsed_s"}


def _command(model: Path, p1: Path, p2: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "labalign.cli.train", "train",
        "--model", str(model), "--phase1", str(p1), "--phase2", str(p2), "--out", str(out),
        "--batch-size", "4", "--epochs", "1", "--save-every", "5", "--max-seq-len", "256",
        "--max-batch-tokens", "256", "--lr", "3e-3", "--warmup-steps", "2", "--no-progress", *extra,
    ]  # fmt: skip


def _env(tmp_path: Path, threads: int = 2) -> dict[str, str]:
    # Same thread count for every run: results are then bit-identical on one machine.
    return dict(
        os.environ, OMP_NUM_THREADS=str(threads), LABALIGN_DEBUG="1", XDG_CACHE_HOME=str(tmp_path / "cache")
    )


def _steps(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in log]


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    model = tiny_model_dir(tmp_path / "model")
    p1 = write_jsonl(tmp_path / "p1.jsonl", make_records(24, seed=1))
    p2 = write_jsonl(tmp_path / "p2.jsonl", make_records(100, seed=2))
    env = _env(tmp_path, threads=1)  # one thread each: the reference and the victim run side by side

    reference = tmp_path / "reference"
    ref_proc = subprocess.Popen(
        _command(model, p1, p2, reference),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _command(model, p1, p2, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    marker = killed / "phase2" / "state" / "step-5" / "progress.json"
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    # Killed mid-phase 2: some steps were logged past the checkpoint, the run did not finish.
    assert not (killed / "summary.json").exists() and not (killed / "phase2" / "done.json").exists()
    logged = [r["step"] for r in read_log(killed / "training_log.jsonl") if r["phase"] == "phase2"]
    assert 5 <= max(logged) < 25

    _, ref_err = ref_proc.communicate(timeout=300)
    assert ref_proc.returncode == 0, ref_err[-2000:]

    resumed = subprocess.run(
        _command(model, p1, p2, killed, "--resume"), env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    expected = _steps(read_log(reference / "training_log.jsonl"))
    got = _steps(read_log(killed / "training_log.jsonl"))
    assert [(r["phase"], r["step"]) for r in got] == [(r["phase"], r["step"]) for r in expected]
    assert got == expected  # losses, learning rates, grad norms: step for step, exactly
    ref_final, got_final = (
        load_file(reference / "final" / "model.safetensors"),
        load_file(killed / "final" / "model.safetensors"),
    )
    assert all(torch.equal(ref_final[k], got_final[k]) for k in ref_final)
    assert sorted(p.name for p in (killed / "phase2" / "checkpoints").iterdir()) == sorted(
        p.name for p in (reference / "phase2" / "checkpoints").iterdir()
    )


def test_two_gloo_processes_match_one_process(tmp_path: Path) -> None:
    model = tiny_model_dir(tmp_path / "model")
    p1 = write_jsonl(tmp_path / "p1.jsonl", make_records(30, seed=1))
    p2 = write_jsonl(tmp_path / "p2.jsonl", make_records(30, seed=2))
    env = _env(tmp_path)
    multi = tmp_path / "multi"
    run = subprocess.run(
        [*_command(model, p1, p2, multi, "--nproc", "2", "--bf16", "off", "--lora")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]

    single = tmp_path / "single"
    settings = TrainSettings(
        batch_size=4,
        epochs=1,
        save_every=5,
        max_seq_len=256,
        max_batch_tokens=256,
        learning_rate=3e-3,
        warmup_steps=2,
        bf16="off",
        lora=True,
    )
    train(
        TrainConfig(
            model=str(model),
            out=single,
            phase1=p1,
            phase2=p2,
            settings=settings,
            cache_dir=tmp_path / "cache",
            show_progress=False,
        )
    )
    one = [r for r in read_log(single / "training_log.jsonl") if r["event"] == "train"]
    two = [r for r in read_log(multi / "training_log.jsonl") if r["event"] == "train"]
    assert [(r["phase"], r["step"], r["tokens"]) for r in one] == [
        (r["phase"], r["step"], r["tokens"]) for r in two
    ]
    for a, b in zip(one, two, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4), (a, b)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-3), (a, b)
    assert (multi / "final" / "config.json").is_file()
