"""`train.interpolation: auto`: the largest WiSE-FT weight whose held-out general text stays within the
forgetting budget.

final/ = base + w x (tuned - base). The more of the way back to the base, the less is forgotten, and
(up to a point) the less is learned: on the example's data the same trained weights gave perplexity
ratios of 1.25 / 1.145 / 1.097 at w = 1 / 0.75 / 0.6 and knowledge gains of +0.090 / +0.117 / +0.074
F1, and with another training seed w = 0.6 landed at 1.111. A fixed w is right for one run only;
this tries w from 1 down in steps of 0.05 on the held-out slice of the general replay text (never
trained on, never the evaluation's text; its ratio tracked the forgetting check within 0.006) and
keeps the first within `forgetting_budget`.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from labalign.train.checkpoint import copy_checkpoint
from labalign.train.general import GeneralValidation
from labalign.train.interpolate import interpolate_checkpoint

DEFAULT_BUDGET = 1.10  # the forgetting check's flag (evaluate.forgetting)
STEP = 0.05
LOWEST = 0.3  # below this the tuned model has kept too little of what it learned to be worth it


@dataclass(frozen=True)
class Choice:
    weight: float
    general_ratio: float
    candidates: list[dict[str, float]]  # every weight tried, in order, with its ratio


def mean_nll(model: Any, general: GeneralValidation, *, bf16: bool) -> float:
    """Mean loss per scored token of `model` on the validation slice: the positions the base's loss
    (`general.base_nll`) was summed over, sample by sample (no packing, so no attention across samples)."""
    data = general.data
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for i in range(len(data)):
            ids, supervised = data.sample(i)
            targets = torch.as_tensor(ids[1:], device=device)
            mask = torch.as_tensor(supervised[1:], device=device)
            if not bool(mask.any()):
                continue
            logits = model(torch.as_tensor(ids[None, :-1], device=device)).logits[0].float()
            losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
            total += float(losses[mask].sum())
            count += int(mask.sum())
    return total / max(count, 1)


def choose_interpolation(
    base_dir: Path,
    tuned_dir: Path,
    final: Path,
    general: GeneralValidation,
    budget: float,
    *,
    bf16: bool,
    device: torch.device,
) -> Choice:
    """Write final/ at the largest weight (1, 0.95, ... down to 0.3) whose held-out general ratio is
    within `budget`; when none is, at the weight with the lowest ratio."""
    from transformers import AutoModelForCausalLM

    candidates: list[dict[str, float]] = []
    trial = final.with_name(final.name + ".trial")
    best: tuple[float, float] | None = None  # (ratio, weight) of the least drift seen
    steps = round((1 - LOWEST) / STEP)
    for k in range(steps + 1):
        weight = round(1 - k * STEP, 4)
        if weight < 1:
            interpolate_checkpoint(base_dir, tuned_dir, trial, weight)
            source = trial
        else:
            source = tuned_dir
        model = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32)
        model.to(device).eval()  # type: ignore[arg-type]
        ratio = general.ratio(mean_nll(model, general, bf16=bf16))
        del model
        candidates.append({"interpolation": weight, "general_ratio": ratio})
        if best is None or ratio < best[0]:
            best = (ratio, weight)
            if source is trial:
                _keep(trial, final)
            else:
                copy_checkpoint(tuned_dir, final)
        if ratio <= budget or not math.isfinite(ratio):
            break
    shutil.rmtree(trial, ignore_errors=True)
    assert best is not None
    return Choice(weight=best[1], general_ratio=best[0], candidates=candidates)


def _keep(trial: Path, final: Path) -> None:
    shutil.rmtree(final, ignore_errors=True)
    trial.rename(final)
