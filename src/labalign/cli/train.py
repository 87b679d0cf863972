"""`labalign train`: phased (LAB) or stacked training of the student on messages JSONL."""

from __future__ import annotations

import os
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError
from rich.table import Table

from labalign.cli._common import OutputFormat, console, layered_settings, print_json
from labalign.errors import ConfigError
from labalign.run.profiles import PROFILES, get_profile

# Flag name -> TrainSettings field, for the flags that override settings (unset flags keep the file's
# or environment's value).
_SETTING_FLAGS = {
    "strategy": "strategy",
    "epochs": "epochs",
    "phase1_epochs": "phase1_epochs",
    "phase2_epochs": "phase2_epochs",
    "lr": "learning_rate",
    "batch_size": "batch_size",
    "warmup_steps": "warmup_steps",
    "scheduler": "scheduler",
    "seed": "seed",
    "max_seq_len": "max_seq_len",
    "long_samples": "long_samples",
    "max_batch_tokens": "max_batch_tokens",
    "holdout_fraction": "holdout_fraction",
    "save_every": "save_every",
    "keep_last": "keep_last",
    "lora": "lora",
    "lora_rank": "lora_rank",
    "lora_alpha": "lora_alpha",
    "lora_layers": "lora_layers",
    "merge_lora": "merge_lora",
    "interpolation": "interpolation",
    "replay_data": "replay_data",
    "replay_ratio": "replay_ratio",
    "replay_ce": "replay_ce",
    "kl_weight": "kl_weight",
    "kl_top_k": "kl_top_k",
    "general_validation": "general_validation",
    "forgetting_budget": "forgetting_budget",
    "interpolation_budget": "interpolation_budget",
    "bf16": "bf16",
    "gradient_checkpointing": "gradient_checkpointing",
    "freeze_embeddings": "freeze_embeddings",
    "distributed": "distributed",
}


class StrategyChoice(StrEnum):
    phased = "phased"
    stacked = "stacked"


class SchedulerChoice(StrEnum):
    constant = "constant"
    cosine = "cosine"


class LongSamplesChoice(StrEnum):
    drop = "drop"
    truncate = "truncate"


class Bf16Choice(StrEnum):
    auto = "auto"
    on = "on"
    off = "off"


class DistributedChoice(StrEnum):
    auto = "auto"
    ddp = "ddp"
    fsdp = "fsdp"


def _train_settings(ctx: typer.Context, flags: dict[str, Any], profile: str | None) -> tuple[Any, Path]:
    """TrainSettings from a run profile's `train.` settings, then the `train:` settings section (when the
    config has one), then these flags."""
    from labalign.settings.train import TrainSettings

    s = layered_settings(ctx, get_profile(profile).settings if profile else None, {})
    base = getattr(s, "train", None)
    data = base.model_dump() if isinstance(base, TrainSettings) else {}
    for flag, value in flags.items():
        if value is not None:
            value = str(value) if isinstance(value, Path) else value
            data[_SETTING_FLAGS[flag]] = value.value if isinstance(value, Enum) else value
    try:
        return TrainSettings(**data), s.cache_dir
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(["train", *(str(p) for p in err["loc"])])  # no loc: a rule across settings
        raise ConfigError(f"setting '{where}': {err['msg']}", hint="check the command-line flags") from exc


def _print_summary(result: Any) -> None:
    table = Table(title="training summary")
    for name, justify in (
        ("phase", "left"),
        ("steps", "right"),
        ("samples", "right"),
        ("tokens", "right"),
        ("time", "right"),
        ("best checkpoint", "left"),
        ("held-out loss", "right"),
        ("general ppl / base", "right"),
    ):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for p in result.phases:
        minutes, seconds = divmod(round(p.seconds), 60)
        loss = "-" if p.heldout_loss is None else f"{p.heldout_loss:.4f}"
        if p.score is not None:
            loss += f" (score {p.score:.3f})"
        table.add_row(
            p.phase,
            str(p.steps),
            f"{p.samples:,}",
            f"{p.tokens:,}",
            f"{minutes}:{seconds:02d}",
            f"{p.best_dir} (step {p.best_step})",
            loss,
            "-" if p.general_ratio is None else f"{p.general_ratio:.3f}x",
        )
    console.print(table)
    if result.interpolation < 1:
        w = result.interpolation
        console.print(f"{result.final} = base + {w:g} x (tuned - base) (train.interpolation)")
    for p in result.phases:
        data = p.data
        if data.get("dropped_long") or data.get("truncated") or data.get("dropped_unsupervised"):
            console.print(
                f"{p.phase}: {data['samples']} samples read, {data['dropped_long']} dropped as too long, "
                f"{data['truncated']} truncated, {data['dropped_unsupervised']} without trained tokens",
                highlight=False,
            )
    console.print(f"final checkpoint: {result.final}", soft_wrap=True, highlight=False)


def train(
    ctx: typer.Context,
    model: str = typer.Option(
        "default",
        "--model",
        "-m",
        help="Student: a Hugging Face model directory, or 'default' (Gemma 3 270M).",
    ),
    phase1: Path = typer.Option(None, "--phase1", help="Phase 1 (knowledge) messages JSONL."),
    phase2: Path = typer.Option(None, "--phase2", help="Phase 2 (skills + replay) messages JSONL."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory of the run."),
    profile: str = typer.Option(
        None,
        "--profile",
        "-p",
        help=f"Settings profile, as in `labalign run` ({', '.join(PROFILES)}): its training settings under "
        "the config file, env and flags. Default: the settings alone.",
    ),
    strategy: StrategyChoice = typer.Option(None, "--strategy", help="phased (default) or stacked."),
    epochs: int = typer.Option(None, "--epochs", help="Epochs per phase."),
    phase1_epochs: int = typer.Option(None, "--phase1-epochs", help="Epochs of phase 1."),
    phase2_epochs: int = typer.Option(None, "--phase2-epochs", help="Epochs of phase 2."),
    lr: float = typer.Option(None, "--lr", help="Peak learning rate (default 2e-5, 2e-4 with LoRA)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Effective batch size in samples."),
    warmup_steps: int = typer.Option(None, "--warmup-steps", help="Linear warm-up steps."),
    scheduler: SchedulerChoice = typer.Option(None, "--scheduler", help="After warm-up: constant or cosine."),
    seed: int = typer.Option(None, "--seed", help="Seed of data order, held-out split and init."),
    max_seq_len: int = typer.Option(None, "--max-seq-len", help="Longest sample in tokens."),
    long_samples: LongSamplesChoice = typer.Option(
        None, "--long-samples", help="Samples over --max-seq-len: drop or truncate."
    ),
    max_batch_tokens: int = typer.Option(None, "--max-batch-tokens", help="Tokens per packed micro-batch."),
    holdout_fraction: float = typer.Option(
        None, "--holdout-fraction", help="Fraction held out to pick the best checkpoint."
    ),
    save_every: int = typer.Option(None, "--save-every", help="Checkpoint every N steps (and each epoch)."),
    keep_last: int = typer.Option(None, "--keep-last", help="Step checkpoints kept besides the best."),
    lora: bool = typer.Option(None, "--lora/--full", help="Train LoRA adapters, or all weights."),
    lora_rank: int = typer.Option(None, "--lora-rank", help="LoRA rank."),
    lora_alpha: int = typer.Option(None, "--lora-alpha", help="LoRA alpha."),
    lora_layers: int = typer.Option(
        None, "--lora-layers", help="Adapters only in the top N layers (faster backward); default all."
    ),
    merge_lora: bool = typer.Option(
        None, "--merge-lora/--no-merge-lora", help="Merge adapters into final/ (default), or save them."
    ),
    interpolation: str = typer.Option(
        None,
        "--interpolation",
        help="final/ = base + W * (tuned - base), W in (0, 1], or auto: the largest W whose held-out "
        "general text stays within --forgetting-budget (1.10 unset); default 1.",
    ),
    replay_data: Path = typer.Option(
        None,
        "--replay-data",
        help="General data to replay in each phase (messages or pretraining JSONL), e.g. the base "
        "model's own text or your instruction data.",
    ),
    replay_ratio: float = typer.Option(
        None, "--replay-ratio", help="Replay tokens per token of each phase's own data (0: no replay)."
    ),
    replay_ce: bool = typer.Option(
        None, "--replay-ce/--no-replay-ce", help="Train the replay text with cross-entropy (default on)."
    ),
    kl_weight: float = typer.Option(
        None, "--kl-weight", help="Weight of KL(base || tuned) on the replay tokens (0: off)."
    ),
    kl_top_k: int = typer.Option(None, "--kl-top-k", help="Base tokens per position kept for the KL."),
    general_validation: float = typer.Option(
        None, "--general-validation", help="Share of the replay text held out to measure drift (0.1)."
    ),
    forgetting_budget: float = typer.Option(
        None,
        "--forgetting-budget",
        help="Largest general-text perplexity ratio to the base a phase's chosen checkpoint may have.",
    ),
    interpolation_budget: float = typer.Option(
        None,
        "--interpolation-budget",
        help="interpolation auto: largest held-out general-text perplexity ratio of final/ "
        "(default: the forgetting budget, else 1.10).",
    ),
    bf16: Bf16Choice = typer.Option(None, "--bf16", help="bf16 autocast: auto, on or off."),
    gradient_checkpointing: bool = typer.Option(
        None, "--gradient-checkpointing/--no-gradient-checkpointing", help="Trade compute for memory."
    ),
    freeze_embeddings: bool = typer.Option(
        None, "--freeze-embeddings/--train-embeddings", help="Freeze the input embeddings (default)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Data-parallel processes (GPUs, or CPU with gloo)."),
    distributed: DistributedChoice = typer.Option(
        None,
        "--distributed",
        help="With --nproc or torchrun: fsdp shards weights, gradients and optimizer state (FSDP2), ddp "
        "replicates them; auto (default): fsdp on GPUs, ddp on CPU.",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
    fmt: OutputFormat = typer.Option(OutputFormat.text, "--format", help="text or json."),
) -> None:
    """Train the student: phase 1 (knowledge), its best checkpoint, then phase 2 (skills + replay).

    Writes OUT/phase1/{checkpoints,best}, OUT/phase2/..., OUT/final (a Hugging Face model directory
    with tokenizer and chat template), OUT/training_log.jsonl, OUT/loss.png and OUT/summary.json.

    Example: labalign train --model default --phase1 phase1.jsonl --phase2 phase2.jsonl --out runs/a --lora
    """
    flags = {name: value for name, value in ctx.params.items() if name in _SETTING_FLAGS}
    train_settings, cache_dir = _train_settings(ctx, flags, profile)
    from labalign.train.launch import launch
    from labalign.train.phases import TrainConfig

    result = launch(
        TrainConfig(
            model=model,
            out=out,
            phase1=phase1,
            phase2=phase2,
            settings=train_settings,
            resume=resume,
            cache_dir=cache_dir,
            show_progress=progress,
        ),
        nproc,
    )
    if int(os.environ.get("RANK", "0")) != 0:
        return
    if fmt is OutputFormat.json:
        print_json(result.as_dict())
    else:
        _print_summary(result)
