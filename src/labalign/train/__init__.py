"""Phased training of the student (LAB): tokenize + mask, pack, chunked loss, loop, checkpoints.

Library API: `train(TrainConfig(...)) -> TrainResult`; the `labalign train` command wraps it.
Names are loaded on first use: `labalign.config` imports `train.settings`, which must not pull in
torch (or import `config` back) just to read settings.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from labalign.train.loop import Evaluator, PhaseResult
    from labalign.train.phases import TrainConfig, TrainResult, train
    from labalign.train.settings import TrainSettings

_WHERE = {
    "Evaluator": "labalign.train.loop",
    "PhaseResult": "labalign.train.loop",
    "TrainConfig": "labalign.train.phases",
    "TrainResult": "labalign.train.phases",
    "train": "labalign.train.phases",
    "TrainSettings": "labalign.train.settings",
}

__all__ = ["Evaluator", "PhaseResult", "TrainConfig", "TrainResult", "TrainSettings", "train"]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'labalign.train' has no attribute {name!r}")
