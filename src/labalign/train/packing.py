"""Padding-free packing: samples laid end to end, positions restarting at 0 for each one.

A packed micro-batch is one row of tokens. Position ids that restart at 0 tell transformers where each
sample begins: with no attention mask and no KV cache it builds a block-diagonal causal mask (SDPA,
eager) or varlen boundaries (flash-attention), so no token attends across samples. Targets are shifted
inside each sample, so no token is trained to predict the first token of the next sample.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from labalign.modeling.loss import IGNORE
from labalign.train.tokenize import IntArray, TokenizedData


@dataclass(frozen=True)
class PackedBatch:
    input_ids: torch.Tensor  # (1, T) long
    position_ids: torch.Tensor  # (1, T) long
    targets: torch.Tensor  # (1, T) long, IGNORE where no loss
    samples: int
    tokens: int
    target_tokens: int
    # The KL anchor (general replay): positions of the row whose next-token distribution is anchored,
    # and the base model's top-k there ((n,) long, (n, k) long, (n, k) float); None without anchors.
    kl_index: torch.Tensor | None = None
    kl_ids: torch.Tensor | None = None
    kl_logp: torch.Tensor | None = None

    def to(self, device: torch.device) -> PackedBatch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return t.to(device, non_blocking=True) if t is not None else None

        return PackedBatch(
            self.input_ids.to(device, non_blocking=True),
            self.position_ids.to(device, non_blocking=True),
            self.targets.to(device, non_blocking=True),
            self.samples,
            self.tokens,
            self.target_tokens,
            move(self.kl_index),
            move(self.kl_ids),
            move(self.kl_logp),
        )


def build_pack(
    data: TokenizedData, indices: Sequence[int], *, filler_token: int = 0, pad_to: int = 1
) -> PackedBatch:
    """One packed row from samples `indices`, its length rounded up to a multiple of `pad_to` with a
    filler block that has its own positions and no loss (a handful of row shapes instead of a new one
    per micro-batch: CPU kernels cache per shape). An empty list gives a filler-only row (a rank with
    nothing to do still joins the gradient all-reduce)."""
    ids_parts, pos_parts, tgt_parts, kl_parts = [], [], [], []
    at = 0
    for i in indices:
        ids, mask = data.sample(i)
        targets = np.full(len(ids), IGNORE, dtype=np.int64)
        targets[:-1] = np.where(mask[1:], ids[1:], IGNORE)
        ids_parts.append(ids)
        pos_parts.append(np.arange(len(ids), dtype=np.int64))
        tgt_parts.append(targets)
        if data.anchors is not None:
            lo = int(data.offsets[i])
            active = np.flatnonzero(data.anchors.active[lo : lo + len(ids)])
            kl_parts.append((at + active, lo + active))
        at += len(ids)
    tokens = sum(len(p) for p in ids_parts)
    filler = max(-(-tokens // pad_to) * pad_to, 1) - tokens
    if filler:
        ids_parts.append(np.full(filler, filler_token, dtype=np.int64))
        pos_parts.append(np.arange(filler, dtype=np.int64))
        tgt_parts.append(np.full(filler, IGNORE, dtype=np.int64))
    targets_all = np.concatenate(tgt_parts)
    kl: tuple[torch.Tensor | None, ...] = (None, None, None)
    if data.anchors is not None and kl_parts:
        row = np.concatenate([r for r, _ in kl_parts])
        source = np.concatenate([src for _, src in kl_parts])
        if len(row):
            kl = (
                torch.from_numpy(row.astype(np.int64)),
                torch.from_numpy(data.anchors.ids[source].astype(np.int64)),
                torch.from_numpy(data.anchors.logp[source]),
            )
    return PackedBatch(
        input_ids=torch.from_numpy(np.concatenate(ids_parts)).unsqueeze(0),
        position_ids=torch.from_numpy(np.concatenate(pos_parts)).unsqueeze(0),
        targets=torch.from_numpy(targets_all).unsqueeze(0),
        samples=len(indices),
        tokens=tokens,
        target_tokens=int((targets_all != IGNORE).sum()),
        kl_index=kl[0],
        kl_ids=kl[1],
        kl_logp=kl[2],
    )


def _ffd_bin_count(lengths: Sequence[int], capacity: int) -> int:
    free: list[int] = []
    for length in sorted(lengths, reverse=True):
        for b, room in enumerate(free):
            if length <= room:
                free[b] -= length
                break
        else:
            free.append(capacity - length)
    return len(free)


def _balanced(items: list[tuple[int, int]], bins: int, capacity: int) -> list[list[int]] | None:
    """Place (index, length) items, longest first, into the least-loaded bin; None when even that bin
    has no room (then no bin has)."""
    heap = [(0, b) for b in range(bins)]
    content: list[list[int]] = [[] for _ in range(bins)]
    for index, length in items:
        load, b = heap[0]
        if load + length > capacity:
            return None
        heapq.heapreplace(heap, (load + length, b))
        content[b].append(index)
    return content


def pack_step(
    indices: Iterable[int], lengths: Sequence[int] | IntArray, capacity: int, world_size: int = 1
) -> list[list[list[int]]]:
    """Split one optimizer step's samples into micro-batches of at most `capacity` tokens, the same
    number for every rank, with tokens balanced across micro-batches and ranks.

    Multipack-style: first-fit-decreasing gives the number of bins, rounded up to a multiple of the
    world size; the samples are then placed longest first into the least-loaded bin that fits.
    Returns, per rank, its micro-batches as lists of sample indices (some may be empty).
    """
    items = sorted(((int(i), int(lengths[int(i)])) for i in indices), key=lambda it: (-it[1], it[0]))
    if any(length > capacity for _, length in items):
        raise ValueError("a sample is longer than the micro-batch token budget")
    bins = _ffd_bin_count([length for _, length in items], capacity) if items else 1
    bins = max(world_size, math.ceil(bins / world_size) * world_size)
    while (content := _balanced(items, bins, capacity)) is None:
        bins += world_size
    per_rank = bins // world_size
    loads = [sum(int(lengths[i]) for i in b) for b in content]
    rank_load = [0] * world_size
    ranks: list[list[list[int]]] = [[] for _ in range(world_size)]
    for b in sorted(range(bins), key=lambda j: (-loads[j], j)):
        open_ranks = [r for r in range(world_size) if len(ranks[r]) < per_rank]
        r = min(open_ranks, key=lambda r: (rank_load[r], r))
        ranks[r].append(sorted(content[b]))
        rank_load[r] += loads[b]
    return ranks


def epoch_order(n: int, *, seed: int, phase: int, epoch: int) -> list[int]:
    """The sample order of one epoch: a function of (seed, phase, epoch) only, so a resumed run and a
    run on another number of processes see the same steps."""
    rng = np.random.default_rng([seed, phase, epoch])
    return [int(i) for i in rng.permutation(n)]


def steps_of(order: Sequence[int], batch_size: int) -> list[list[int]]:
    """Consecutive groups of `batch_size` samples; the last step may be smaller."""
    return [list(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]
