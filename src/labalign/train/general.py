"""General replay in training: how much of it each phase gets, and the held-out slice that tells how far
a checkpoint has drifted from the base on general text.

Replay is mixed into each phase by tokens (`replay_ratio` replay tokens per token of the phase's own
data), drawn in a seeded order that differs per phase, so phase 1 and phase 2 see different text when
the pool allows. A slice of the pool (`general_validation`, whole openings at a time) is never trained
on: each checkpoint's loss there, against the base's loss on the same tokens, gives its general-text
perplexity ratio, which selection holds within `forgetting_budget`. That slice is the base student's
own text on the shipped openings, never the forgetting check's documents.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from labalign.train.tokenize import TokenizedData


@dataclass
class GeneralValidation:
    """The held-out replay slice (plain cross-entropy on every token, no anchors) and the base's summed
    loss on exactly the positions that cross-entropy scores."""

    data: TokenizedData
    base_nll: float
    tokens: int

    def ratio(self, tuned_mean_nll: float) -> float:
        """Perplexity of the tuned model over the base's on this slice."""
        return math.exp(tuned_mean_nll - self.base_nll / self.tokens)


def _group(sample_id: str) -> str:
    """Samples of the same opening ('opening-012-1' -> 'opening-012') stay on one side of the split."""
    head, _, tail = sample_id.rpartition("-")
    return head if head and tail.isdigit() else sample_id


def split_general(data: TokenizedData, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, validation) indices of the replay pool, by opening; at least one sample on each side."""
    groups = sorted({_group(i) for i in data.ids})
    if fraction <= 0 or len(groups) < 2:
        return list(range(len(data))), []
    count = min(len(groups) - 1, max(1, round(fraction * len(groups))))
    ranked = sorted(groups, key=lambda g: hashlib.sha256(f"{seed}:general:{g}".encode()).digest())
    held = set(ranked[:count])
    train = [i for i, sid in enumerate(data.ids) if _group(sid) not in held]
    val = [i for i, sid in enumerate(data.ids) if _group(sid) in held]
    return train, val


def validation(data: TokenizedData, indices: list[int], base_nll: np.ndarray) -> GeneralValidation | None:
    """The validation slice as plain text to score, with the base's loss on the same positions."""
    if not indices:
        return None
    part = data.subset(indices)
    part.anchors = None
    # Cross-entropy scores token t (t >= 1) of each sample when it is supervised: the base's loss on it
    # sits at position t - 1 of the replay set.
    positions = np.concatenate([np.arange(data.offsets[i], data.offsets[i + 1] - 1) for i in indices]).astype(
        np.int64
    )
    scored = data.supervised[positions + 1]
    tokens = int(scored.sum())
    if tokens == 0:
        return None
    return GeneralValidation(part, float(base_nll[positions][scored].sum()), tokens)


def pick_replay(pool: list[int], lengths: np.ndarray, budget_tokens: int, seed: int, phase: int) -> list[int]:
    """Replay samples for one phase: a seeded order of the pool, cycled if the phase needs more tokens
    than the pool has, cut when `budget_tokens` is reached."""
    if budget_tokens <= 0 or not pool:
        return []
    rng = np.random.default_rng([seed, phase, 7])
    out: list[int] = []
    total = 0
    while total < budget_tokens:
        for i in rng.permutation(len(pool)):
            out.append(pool[int(i)])
            total += int(lengths[pool[int(i)]])
            if total >= budget_tokens:
                break
    return out
