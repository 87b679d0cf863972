"""hf_decode: batched decoding that drops finished rows gives each row what it would get alone."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
import torch

from labalign.llm import hf_decode
from tests.test_train_helpers import tiny_model


def _model(arch: str) -> Any:
    # Gemma 3's sliding-window layers (window 4, shorter than the sequences) sit next to full-attention
    # ones: both kinds of cache layer are narrowed when rows leave.
    overrides: dict[str, Any] = {"sliding_window": 4} if arch == "gemma3" else {}
    return tiny_model(arch, vocab_size=97, **overrides).double().eval()


def _alone(model: Any, prompt: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False
        )
    return [int(t) for t in out[0, len(prompt) :]]


@pytest.mark.parametrize("arch", ["gemma3", "llama"])
def test_each_row_decodes_as_it_would_alone(arch: str) -> None:
    model = _model(arch)
    prompts = [[2, 5, 9, 11, 3, 7, 8], [2, 8], [2, 4, 4, 6, 50]]
    width = max(map(len, prompts))
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    seen: list[int] = []

    def choose(live: list[int], logits: torch.Tensor) -> torch.Tensor:
        seen.append(len(live))
        return logits.argmax(-1)

    # Row 1 stops early (a stand-in for a stop string), row 2 at its own limit, row 0 runs longest.
    out = hf_decode.decode(
        model, ids, mask, max_new=[14, 20, 6], choose=choose, ended=lambda i, t: i == 1 and len(t) == 3
    )
    assert [len(t) for t in out] == [14, 3, 6]
    assert seen == [3, 3, 3, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1]  # finished rows left the batch
    for prompt, tokens in zip(prompts, out, strict=True):
        assert tokens == _alone(model, prompt, len(tokens))


def test_row_dropping_needs_a_standard_cache() -> None:
    assert hf_decode.supports_row_dropping(_model("llama"))
    assert not hf_decode.supports_row_dropping(object())


def _cost(spans: list[tuple[int, int]], lengths: list[int], max_new: list[int], step_cost: int) -> int:
    return sum((e - s) * lengths[s] + step_cost * max(max_new[s:e]) for s, e in spans)


def _all_splits(n: int, batch_size: int) -> list[list[tuple[int, int]]]:
    if n == 0:
        return [[]]
    return [
        [*head, (start, n)]
        for start in range(max(n - batch_size, 0), n)
        for head in _all_splits(start, batch_size)
    ]


def test_plan_batches_finds_the_cheapest_split() -> None:
    rng = np.random.default_rng(0)
    for _ in range(40):
        n = int(rng.integers(1, 8))
        lengths = sorted((int(x) for x in rng.integers(1, 500, n)), reverse=True)
        max_new = [int(x) for x in rng.integers(1, 100, n)]
        step_cost = int(rng.integers(0, 200))
        spans = hf_decode.plan_batches(lengths, max_new, batch_size=3, step_cost=step_cost)
        assert spans[0][0] == 0 and spans[-1][1] == n
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
        assert all(0 < e - s <= 3 for s, e in spans)
        best = min(_cost(split, lengths, max_new, step_cost) for split in _all_splits(n, 3))
        assert _cost(spans, lengths, max_new, step_cost) == best


def test_a_long_prompt_is_not_padded_into_a_batch_of_short_ones() -> None:
    lengths = [500] + [30] * 125
    cost = hf_decode.step_cost_tokens
    cpu = hf_decode.plan_batches(lengths, [96] * 126, batch_size=64, step_cost=cost("cpu"))
    assert cpu[0] == (0, 1)
    gpu = hf_decode.plan_batches(lengths, [96] * 126, batch_size=64, step_cost=cost("cuda:0"))
    assert len(gpu) == 2  # padding is cheap there: as few batches as batch_size allows
    with pytest.raises(ValueError):
        hf_decode.plan_batches([1, 2], [1, 1], batch_size=4, step_cost=1)
