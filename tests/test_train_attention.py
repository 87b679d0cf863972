"""Packed attention: sample boundaries from position ids, and the inputs it refuses (transformers builds
no mask for it, so anything but one packed row would silently attend across padding)."""

from __future__ import annotations

import pytest
import torch

from labalign.train.attention import PACKED_SDPA, packed_sdpa_forward, register, sample_bounds
from labalign.train.model import attn_implementation
from tests.test_train_helpers import tiny_model


def test_samples_start_where_positions_restart() -> None:
    positions = torch.tensor([0, 1, 2, 0, 0, 1, 0, 1, 2, 3])
    assert sample_bounds(positions) == [(0, 3), (3, 4), (4, 6), (6, 10)]
    # a row cut mid-sample (positions not starting at 0) still covers every token
    assert sample_bounds(torch.tensor([5, 6, 0, 1])) == [(0, 2), (2, 4)]


def test_cpu_training_uses_packed_attention_and_an_explicit_setting_wins() -> None:
    assert attn_implementation(None, torch.device("cpu")) == PACKED_SDPA
    assert attn_implementation("eager", torch.device("cpu")) == "eager"


def _qkv(batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q = torch.randn(batch, 2, length, 8)
    return q, torch.randn(batch, 1, length, 8), torch.randn(batch, 1, length, 8)


@pytest.mark.parametrize(
    "batch, mask, positions",
    [
        (2, None, torch.zeros(2, 6, dtype=torch.long)),  # a padded batch
        (1, torch.ones(1, 1, 6, 6, dtype=torch.bool), torch.arange(6)[None]),  # a mask to honour
        (1, None, None),  # no positions: no sample boundaries
    ],
)
def test_refuses_what_is_not_one_packed_row(
    batch: int, mask: torch.Tensor | None, positions: torch.Tensor | None
) -> None:
    module = tiny_model("llama").model.layers[0].self_attn
    q, k, v = _qkv(batch, 6)
    with pytest.raises(RuntimeError, match="one packed row"):
        packed_sdpa_forward(module, q, k, v, mask, position_ids=positions)


def test_a_sample_longer_than_the_sliding_window_sees_only_the_window() -> None:
    """Against SDPA with transformers' sliding-window mask written out (window 3, a 7-token sample
    after a 2-token one)."""
    module = tiny_model("llama").model.layers[0].self_attn
    q, k, v = _qkv(1, 9)
    positions = torch.tensor([[0, 1, 0, 1, 2, 3, 4, 5, 6]])
    out, _ = packed_sdpa_forward(module, q, k, v, None, position_ids=positions, sliding_window=3)
    i, j = torch.arange(7)[:, None], torch.arange(7)[None, :]
    window = (j <= i) & (j > i - 3)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q[:, :, 2:], k[:, :, 2:].expand(1, 2, 7, 8), v[:, :, 2:].expand(1, 2, 7, 8), attn_mask=window
    )
    torch.testing.assert_close(out[:, 2:], ref.transpose(1, 2), rtol=1e-5, atol=1e-6)
    unwindowed = torch.nn.functional.scaled_dot_product_attention(
        q[:, :, 2:], k[:, :, 2:].expand(1, 2, 7, 8), v[:, :, 2:].expand(1, 2, 7, 8), is_causal=True
    )
    assert not torch.allclose(out[:, 2:], unwindowed.transpose(1, 2), atol=1e-4)


def test_registered_name_loads_and_matches_sdpa() -> None:
    register()
    model = tiny_model("gemma3")
    ids = torch.randint(3, 90, (1, 30))
    positions = torch.cat([torch.arange(n) for n in (4, 17, 9)])[None]
    with torch.no_grad():
        ref = model(input_ids=ids, position_ids=positions, use_cache=False).logits
        model.set_attn_implementation(PACKED_SDPA)
        ours = model(input_ids=ids, position_ids=positions, use_cache=False).logits
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
