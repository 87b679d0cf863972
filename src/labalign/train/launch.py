"""Starting training: in this process, or in N processes on this machine (torch.distributed.run), each
running `labalign.train.worker` on the typed config serialized into the output folder. The CLI and
`labalign run` both start training here; the library never builds a command line for its own CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from labalign.errors import LabalignError
from labalign.fileio import write_text_atomic
from labalign.settings.train import TrainSettings
from labalign.train import phases
from labalign.train.phases import LAUNCH_FILE, TrainConfig
from labalign.train.summary import TrainResult


class LaunchConfig(BaseModel):
    """A TrainConfig as it crosses into other processes (everything but an in-process evaluator)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    out: Path
    phase1: Path | None = None
    phase2: Path | None = None
    replay: Path | None = None
    settings: TrainSettings
    resume: bool = False
    cache_dir: Path | None = None
    show_progress: bool = True

    @classmethod
    def of(cls, config: TrainConfig) -> LaunchConfig:
        return cls(**{name: getattr(config, name) for name in cls.model_fields})

    def train_config(self) -> TrainConfig:
        return TrainConfig(**{name: getattr(self, name) for name in type(self).model_fields})


def launched() -> bool:
    """True inside torchrun / accelerate launch (the launcher already started the processes)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def launch(config: TrainConfig, nproc: int = 1) -> TrainResult:
    """Train `config` in `nproc` data-parallel processes (GPUs, or CPU cores with gloo); the result as
    rank 0 wrote it. One process, or a process already started by a launcher, trains right here."""
    if nproc <= 1 or launched():
        return phases.train(config)
    if config.evaluator is not None:
        raise LabalignError(
            "an in-process evaluator cannot be handed to training processes", hint="train with nproc 1"
        )
    config.out.mkdir(parents=True, exist_ok=True)
    path = config.out / LAUNCH_FILE
    write_text_atomic(path, LaunchConfig.of(config).model_dump_json(indent=2) + "\n")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "labalign.train.worker",
        str(path),
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // nproc)))
    code = subprocess.run(command, env=env, check=False).returncode
    if code != 0:
        raise LabalignError(
            f"distributed training failed (exit code {code}; each process's error is above)", path=config.out
        )
    return TrainResult.load(config.out)
