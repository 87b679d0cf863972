"""hf_decode: batched decoding that drops finished rows gives each row what it would get alone."""

from __future__ import annotations

from typing import Any

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
