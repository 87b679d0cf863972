"""Resuming never unpickles: a training state is tensors, JSON and weights_only .pt files."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from labalign.errors import LabalignError
from labalign.train import checkpoint as ckpt


class _Planted:
    """What a hostile checkpoint could hold: unpickling it runs code (here, writes a file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.marker,))


def _state() -> ckpt.TrainState:
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    return ckpt.TrainState(
        trainable={"weight": model.weight.detach().clone()},
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
        rng=[ckpt.rng_state()],
        progress={"step": 1},
    )


def test_state_round_trips_and_restores_every_rng(tmp_path: Path) -> None:
    np.random.seed(1)
    random.seed(2)
    torch.manual_seed(3)
    state = _state()
    ckpt.save_train_state(tmp_path / "step-1", state)
    expected = (np.random.rand(), random.random(), torch.rand(1).item())
    np.random.seed(9)
    random.seed(9)
    torch.manual_seed(9)
    loaded = ckpt.load_train_state(tmp_path / "step-1")
    ckpt.set_rng_state(loaded.rng[0])
    assert (np.random.rand(), random.random(), torch.rand(1).item()) == expected
    assert torch.equal(loaded.trainable["weight"], state.trainable["weight"])
    exp_avg = state.optimizer["state"][0]["exp_avg"]
    assert torch.equal(loaded.optimizer["state"][0]["exp_avg"], exp_avg)
    assert loaded.scheduler == state.scheduler and loaded.progress == {"step": 1}


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt", "rng.pt"])
def test_a_state_that_needs_unpickling_is_refused_without_running_it(tmp_path: Path, name: str) -> None:
    ckpt.save_train_state(tmp_path / "step-1", _state())
    marker = tmp_path / "pwned"
    torch.save({"x": _Planted(marker)}, tmp_path / "step-1" / name)
    with pytest.raises(LabalignError, match="would need unpickling") as info:
        ckpt.load_train_state(tmp_path / "step-1")
    assert not marker.exists()
    assert info.value.path and info.value.path.endswith(name)
    assert "\n" not in str(info.value)
