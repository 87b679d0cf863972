"""Batched decoding that drops finished rows from the batch.

`generate` keeps every row of a batch in each forward pass until the last row ends: a row that
stopped after 20 tokens still costs 76 more passes when another runs to 96. Evaluation asks a tuned
model (which mostly stops after a sentence) its held-out questions in batches of 64: in a quick run
the answers took 36 tokens at the median and 68 at most, so 43% of the row-passes `generate` made
were for finished rows. Here the KV cache, attention mask and positions are narrowed to the rows
still going after every step that ends some (`Cache.batch_select_indices`): 1.59x faster on that
batch, the same answers (benchmarks/decode_vs_generate.py).
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

# (live row indices, their next-token logits as float32 (rows, vocab)) -> the chosen tokens (rows,)
ChooseFn = Callable[[list[int], torch.Tensor], torch.Tensor]
# (row index, its tokens so far) -> whether it has ended (end of sequence or a stop string)
EndedFn = Callable[[int, list[int]], bool]


def supports_row_dropping(model: Any) -> bool:
    """Models whose generation cache is a standard DynamicCache (recurrent and a few custom-cache
    families are not): only those can be narrowed row by row."""
    check = getattr(model, "_supports_default_dynamic_cache", None)
    return bool(check()) if callable(check) else False


def cache_keyword(model: Any) -> str:
    """transformers 5.x renamed `past_key_values` to `cache` (the old name warns, then goes)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.inference_mode()
def decode(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new: Sequence[int],
    choose: ChooseFn,
    ended: EndedFn,
) -> list[list[int]]:
    """Generated tokens of each row of a left-padded batch, each row stopping at its own `max_new`
    or when `ended` says so (the token that ended it is included)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    cache_arg = cache_keyword(model)
    live = list(range(input_ids.shape[0]))
    tokens_out: list[list[int]] = [[] for _ in live]
    mask = attention_mask
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    step_ids = input_ids
    while True:
        out = model(
            input_ids=step_ids,
            attention_mask=mask,
            position_ids=positions,
            **{cache_arg: cache},
            use_cache=True,
            logits_to_keep=1,
        )
        chosen = choose(live, out.logits[:, -1, :].float())
        keep: list[int] = []
        for j, (i, token) in enumerate(zip(live, chosen.tolist(), strict=True)):
            tokens_out[i].append(int(token))
            if len(tokens_out[i]) < max_new[i] and not ended(i, tokens_out[i]):
                keep.append(j)
        if not keep:
            return tokens_out
        if len(keep) < len(live):
            index = torch.tensor(keep, device=input_ids.device)
            cache.batch_select_indices(index)
            mask, chosen = mask[index], chosen[index]
            live = [live[j] for j in keep]
        mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
        positions = mask.sum(-1, keepdim=True) - 1
        step_ids = chosen[:, None].to(input_ids.device)


# What one decoding step of a batch costs beyond its per-row part, in prompt tokens of prefill. Gemma 3
# 270M, fp32, 2 AVX2 cores: a step of 8 to 64 rows costs about 230 ms plus 9 ms per row, prefill about
# 2.5 ms per token (and fewer rows per matmul run at a worse rate, which favours fewer batches). At 40,
# the 124 example held-out questions went into 3 batches instead of 2 and took 205 s instead of 177.
# On a GPU, padding a batch's prompts is nearly free and a step's fixed cost (kernel launches) dominates.
STEP_COST_TOKENS = {"cpu": 90}
STEP_COST_TOKENS_OTHER = 10_000


def step_cost_tokens(device: str) -> int:
    """`STEP_COST_TOKENS` for a torch device string such as "cpu" or "cuda:0"."""
    return STEP_COST_TOKENS.get(device.split(":")[0], STEP_COST_TOKENS_OTHER)


def plan_batches(
    prompt_lengths: Sequence[int], max_new: Sequence[int], *, batch_size: int, step_cost: int
) -> list[tuple[int, int]]:
    """Split rows sorted by prompt length (longest first) into [start, end) batches of at most
    `batch_size` rows, minimising the prompt tokens evaluated (every row is padded to its batch's
    longest) plus `step_cost` per decoding step of each batch (its largest `max_new`).

    One 500-token prompt among 125 short ones padded its whole batch of 64 to 500 tokens: 9x the real
    prompt tokens of the quick run's evaluation questions. A batch of its own costs less than that padding.
    """
    n = len(prompt_lengths)
    if any(a < b for a, b in itertools.pairwise(prompt_lengths)):
        raise ValueError("prompt_lengths must be sorted longest first")
    best = [0.0] + [math.inf] * n  # best[j]: the least cost of rows [0, j)
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        steps = 0
        for i in range(j - 1, max(j - batch_size, 0) - 1, -1):
            steps = max(steps, max_new[i])
            cost = best[i] + (j - i) * prompt_lengths[i] + step_cost * steps
            if cost < best[j]:
                best[j], cut[j] = cost, i
    spans: list[tuple[int, int]] = []
    j = n
    while j > 0:
        spans.append((cut[j], j))
        j = cut[j]
    return spans[::-1]
