"""Checkpoints: loadable Hugging Face directories, plus the full training state kept apart from them.

`<phase>/checkpoints/step-N/` loads with AutoModelForCausalLM / AutoTokenizer as it is (LoRA merged in).
`<phase>/state/step-N/` holds what a resume needs to continue bit for bit: trainable weights,
optimizer, scheduler, every rank's RNG, and the data position. Both are written to a temporary
directory and renamed, so a kill mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from labalign.errors import LabalignError
from labalign.fileio import write_text_atomic
from labalign.train.model import Student

STEP_DIR = re.compile(r"^step-(\d+)$")


def replace_dir(tmp: Path, dest: Path) -> None:
    """Move a finished temporary directory into place, replacing an older one."""
    if dest.exists():
        old = dest.with_name(dest.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        dest.rename(old)
        tmp.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(dest)


def fresh_tmp(dest: Path) -> Path:
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    return tmp


def save_hf_checkpoint(dest: Path, student: Student, state_dict: dict[str, torch.Tensor]) -> None:
    """A plain HF model directory (weights from `state_dict`), with tokenizer and chat template."""
    tmp = fresh_tmp(dest)
    student.causal_lm.save_pretrained(str(tmp), state_dict=state_dict, safe_serialization=True)
    student.tokenizer.save_pretrained(str(tmp))
    replace_dir(tmp, dest)


def save_adapter(dest: Path, student: Student) -> None:
    """The LoRA adapter (peft format, over the phase's starting model) with tokenizer and template."""
    if student.peft_model is None:
        raise ValueError("not a LoRA student")
    tmp = fresh_tmp(dest)
    student.peft_model.save_pretrained(str(tmp))
    student.tokenizer.save_pretrained(str(tmp))
    replace_dir(tmp, dest)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links unsupported
        shutil.copy2(src, dst)


def copy_checkpoint(src: Path, dest: Path) -> None:
    """`best/` and `final/` as hard links to a step's files where possible: checkpoint files are never
    modified in place (always written anew and renamed), so sharing them is safe and costs no space."""
    tmp = fresh_tmp(dest)
    shutil.copytree(src, tmp, copy_function=_link_or_copy)
    replace_dir(tmp, dest)


def rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and Python scalars only, so that it loads with weights_only=True."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (
            str(kind),
            torch.from_numpy(np.asarray(keys).astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainState:
    trainable: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: list[dict[str, Any]]  # one per rank
    progress: dict[str, Any]


def save_train_state(dest: Path, state: TrainState) -> None:
    tmp = fresh_tmp(dest)
    tmp.mkdir()
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in state.trainable.items()}, tmp / "trainable.safetensors"
    )
    torch.save(state.optimizer, tmp / "optimizer.pt")
    torch.save(state.scheduler, tmp / "scheduler.pt")
    torch.save(state.rng, tmp / "rng.pt")
    # Written last: its presence marks a complete state even if the rename were not atomic.
    (tmp / "progress.json").write_text(json.dumps(state.progress, indent=2))
    replace_dir(tmp, dest)


def load_train_state(src: Path) -> TrainState:
    """A saved state, read without running any code from it: tensors (safetensors), JSON, and .pt files
    loaded with weights_only=True (tensors and plain containers only). A checkpoint folder may come from
    someone else, and unpickling it would run whatever it holds."""
    return TrainState(
        trainable=load_file(src / "trainable.safetensors"),
        optimizer=_load_plain(src / "optimizer.pt"),
        scheduler=_load_plain(src / "scheduler.pt"),
        rng=_load_plain(src / "rng.pt"),
        progress=json.loads((src / "progress.json").read_text()),
    )


def _load_plain(path: Path) -> Any:
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:
        raise LabalignError(
            "this training state holds more than tensors and plain values and would need unpickling, "
            "which can run code; it is refused",
            path=path,
            hint="it was written by an older labalign or by someone else: retrain that phase (delete its "
            "state/ folder, or run with --from train)",
        ) from None


def step_dirs(root: Path) -> dict[int, Path]:
    """Finished step-N directories under root, by step."""
    if not root.is_dir():
        return {}
    out = {}
    for child in root.iterdir():
        match = STEP_DIR.match(child.name)
        if match and child.is_dir():
            out[int(match.group(1))] = child
    return out


def latest_state(state_root: Path) -> Path | None:
    complete = {s: p for s, p in step_dirs(state_root).items() if (p / "progress.json").is_file()}
    return complete[max(complete)] if complete else None


def prune(roots: list[Path], keep_last: int, protect: set[int]) -> None:
    """Keep the last `keep_last` steps and the protected ones (the best) under each root."""
    for root in roots:
        dirs = step_dirs(root)
        keep = set(sorted(dirs)[-keep_last:]) | protect
        for step, path in dirs.items():
            if step not in keep:
                shutil.rmtree(path, ignore_errors=True)


def drop_after(roots: list[Path], step: int) -> None:
    """Remove checkpoints newer than the state a resume starts from (written by the killed run)."""
    for root in roots:
        for s, path in step_dirs(root).items():
            if s > step:
                shutil.rmtree(path, ignore_errors=True)
        for leftover in root.glob("*.tmp") if root.is_dir() else []:
            shutil.rmtree(leftover, ignore_errors=True)


def write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
