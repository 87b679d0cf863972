"""Real processes: a run killed with SIGKILL mid-phase resumes exactly where it stopped, and 2-process
data-parallel runs (gloo on CPU), DDP and FSDP, match the single-process run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from labalign.settings.train import TrainSettings
from labalign.train.phases import TrainConfig, train
from labalign.train.trainlog import read_log
from tests.test_train_helpers import make_records, tiny_model_dir, write_jsonl

TIMING_FIELDS = {"tokens_per_s", "elapsed_s"}


def _command(model: Path, p1: Path, p2: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "labalign", "train",
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


def _single(model: Path, p1: Path, p2: Path, out: Path, cache: Path, **overrides: Any) -> None:
    """The run of `_command` in this process, alone: the reference of the multi-process runs."""
    settings = TrainSettings(
        batch_size=4,
        epochs=1,
        save_every=5,
        max_seq_len=256,
        max_batch_tokens=256,
        learning_rate=3e-3,
        warmup_steps=2,
        **overrides,
    )
    config = TrainConfig(
        model=str(model),
        out=out,
        phase1=p1,
        phase2=p2,
        settings=settings,
        cache_dir=cache,
        show_progress=False,
    )
    train(config)


def _assert_same_curve(one: Path, many: Path) -> None:
    """Step for step the same samples and tokens, and the same loss and gradient norm up to summation
    order (ranks add their shares in another order than one process does)."""
    a = [r for r in read_log(one / "training_log.jsonl") if r["event"] == "train"]
    b = [r for r in read_log(many / "training_log.jsonl") if r["event"] == "train"]
    assert [(r["phase"], r["step"], r["tokens"]) for r in a] == [
        (r["phase"], r["step"], r["tokens"]) for r in b
    ]
    for x, y in zip(a, b, strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-4), (x, y)
        assert y["grad_norm"] == pytest.approx(x["grad_norm"], rel=1e-3), (x, y)


def _assert_same_model(one: Path, many: Path, rtol: float = 1e-4) -> None:
    """Same tensors (a tied head saved once in both), close weights, and transformers loads both to the
    same logits."""
    from transformers import AutoModelForCausalLM

    a, b = load_file(one / "model.safetensors"), load_file(many / "model.safetensors")
    assert sorted(a) == sorted(b)
    for name in a:
        assert b[name].dtype == a[name].dtype, name
        torch.testing.assert_close(b[name].float(), a[name].float(), rtol=rtol, atol=1e-5, msg=name)
    ids = torch.tensor([[1, 5, 9, 30, 7, 8, 44]])
    with torch.no_grad():
        logits = [AutoModelForCausalLM.from_pretrained(d)(input_ids=ids).logits.float() for d in (one, many)]
    torch.testing.assert_close(logits[1], logits[0], rtol=rtol, atol=1e-4)


def _parallelism(out: Path, phase: str) -> set[str]:
    return {
        json.loads((d / "progress.json").read_text())["parallelism"]
        for d in (out / phase / "state").iterdir()
    }


def _as_if_killed(out: Path, phase: str, step: int) -> None:
    """Leave `out` as a kill soon after `phase` saved its step-`step` state does: later states gone, a
    later checkpoint half written, the log and best/ ahead of the state, no end-of-run files."""
    for d in (out / phase / "state").iterdir():
        if int(d.name.removeprefix("step-")) > step:
            shutil.rmtree(d)
    for d in (out / phase / "checkpoints").iterdir():
        if int(d.name.removeprefix("step-")) > step:
            d.rename(d.with_name(d.name + ".tmp"))
    for leftover in (out / phase / "done.json", out / "summary.json", out / "loss.png"):
        leftover.unlink()
    shutil.rmtree(out / "final")


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

    assert _parallelism(multi, "phase2") == {"ddp"}  # auto on CPU

    single = tmp_path / "single"
    _single(model, p1, p2, single, tmp_path / "cache", bf16="off", lora=True)
    _assert_same_curve(single, multi)
    assert (multi / "final" / "config.json").is_file()


def test_fsdp_full_fine_tuning_matches_one_process_and_resumes_exactly(tmp_path: Path) -> None:
    """Full fine-tuning with trainable tied embeddings (the head's gradient from the chunked loss and the
    embedding's land on one sharded parameter); fp32, so one process is matched closely."""
    model = tiny_model_dir(tmp_path / "model")
    p1 = write_jsonl(tmp_path / "p1.jsonl", make_records(30, seed=1))
    p2 = write_jsonl(tmp_path / "p2.jsonl", make_records(30, seed=2))
    # General replay with the KL anchor, as the profiles use it: the base's targets are computed once
    # and every rank anchors its own shard of the replay tokens.
    replay = write_jsonl(
        tmp_path / "replay.jsonl",
        [
            {
                "id": f"opening-{i:03d}-0",
                "messages": [{"role": "pretraining", "content": r["messages"][-1]["content"]}],
            }
            for i, r in enumerate(make_records(20, seed=3, min_words=8, max_words=16))
        ],
    )
    env = _env(tmp_path)
    flags: tuple[str, ...] = ("--nproc", "2", "--distributed", "fsdp", "--full", "--train-embeddings")
    flags += ("--bf16", "off", "--replay-data", str(replay), "--replay-ratio", "0.5", "--kl-weight", "1")
    multi = tmp_path / "fsdp"
    run = subprocess.run(
        _command(model, p1, p2, multi, *flags), env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert _parallelism(multi, "phase1") == _parallelism(multi, "phase2") == {"fsdp"}

    single = tmp_path / "single"
    _single(
        model,
        p1,
        p2,
        single,
        tmp_path / "cache",
        bf16="off",
        lora=False,
        freeze_embeddings=False,
        replay_data=str(replay),
        replay_ratio=0.5,
        kl_weight=1.0,
    )
    _assert_same_curve(single, multi)
    _assert_same_model(single / "final", multi / "final")
    summary = json.loads((multi / "summary.json").read_text())
    assert all(p["data"]["replay_samples"] > 0 and p["general_ratio"] for p in summary["phases"])

    # Killed after phase 2's step-5 state: the resumed run gathers nothing it has not saved, restores
    # the shards of weights and optimizer state from full tensors, and continues bit for bit.
    resumed = tmp_path / "resumed"
    shutil.copytree(multi, resumed)
    _as_if_killed(resumed, "phase2", 5)
    assert max(r["step"] for r in read_log(resumed / "training_log.jsonl") if r["phase"] == "phase2") > 5
    run = subprocess.run(
        _command(model, p1, p2, resumed, *flags, "--resume"),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert _steps(read_log(resumed / "training_log.jsonl")) == _steps(read_log(multi / "training_log.jsonl"))
    expected, got = (
        load_file(multi / "final" / "model.safetensors"),
        load_file(resumed / "final" / "model.safetensors"),
    )
    assert sorted(got) == sorted(expected) and all(torch.equal(got[k], expected[k]) for k in expected)
    assert sorted(p.name for p in (resumed / "phase2" / "checkpoints").iterdir()) == sorted(
        p.name for p in (multi / "phase2" / "checkpoints").iterdir()
    )


def test_fsdp_lora_bf16_matches_one_process(tmp_path: Path) -> None:
    """LoRA as on a GPU: a bf16 base with fp32 adapters in each sharded layer, bf16 all-gathers, fp32
    gradient reduction; frozen embeddings; adapters merged into the saved checkpoints."""
    model = tiny_model_dir(tmp_path / "model")
    p1 = write_jsonl(tmp_path / "p1.jsonl", make_records(30, seed=1))
    p2 = write_jsonl(tmp_path / "p2.jsonl", make_records(30, seed=2))
    multi = tmp_path / "fsdp"
    run = subprocess.run(
        _command(model, p1, p2, multi, "--nproc", "2", "--distributed", "fsdp", "--lora", "--bf16", "on"),
        env=_env(tmp_path), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert _parallelism(multi, "phase2") == {"fsdp"}

    single = tmp_path / "single"
    _single(model, p1, p2, single, tmp_path / "cache", bf16="on", lora=True)
    _assert_same_curve(single, multi)
    # The adapters are merged into bf16 base weights: a last-bit difference in an adapter (summation
    # order) can move a merged element by one bf16 step, 2^-8 relative (seen on AVX512-BF16 CPUs).
    _assert_same_model(single / "final", multi / "final", rtol=2**-7)
