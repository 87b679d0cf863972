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


def replay_epochs(
    pool: list[int], lengths: np.ndarray, budget_tokens: int, epochs: int, seed: int, phase: int
) -> list[list[int]]:
    """The replay samples of each epoch of a phase: the same number every epoch (about `budget_tokens`
    at the pool's mean length), drawn in turn from one seeded order of the pool, so every text is used
    once before any is used again. An anchor held on the same few texts epoch after epoch is met on
    those texts and drifts elsewhere: on the example's data, replay of 0.25 tokens per data token at
    KL weight 4 with one fixed draw ended phase 1 at 1.29x the base's held-out general perplexity,
    0.5 at weight 1 (twice the texts) at 1.23x."""
    if budget_tokens <= 0 or not pool:
        return [[] for _ in range(epochs)]
    mean = float(np.mean([lengths[i] for i in pool]))
    per_epoch = max(1, round(budget_tokens / max(mean, 1.0)))
    rng = np.random.default_rng([seed, phase, 7])
    stream: list[int] = []
    while len(stream) < per_epoch * epochs:
        stream += [pool[int(i)] for i in rng.permutation(len(pool))]
    return [stream[e * per_epoch : (e + 1) * per_epoch] for e in range(epochs)]
