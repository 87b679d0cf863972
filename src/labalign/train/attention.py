"""Attention over a packed row one sample at a time (training on CPU).

transformers' SDPA path gives a packed row one block-diagonal mask over the whole row, and the CPU
kernel computes every (query, key) block of it, masked or not: a row of 8 samples of 65 tokens costs 8x
the attention of the samples alone. Here each sample (a run of position ids from 0) is attended to
alone, causally, with no mask unless it is longer than the layer's sliding window. Gemma 3 270M, a row
of 8 samples (520 tokens), 18 layers forward and backward on 2 AVX2 cores: 767 ms with the row's mask,
354 ms per sample, the same output to 4e-7.

Registered with transformers as PACKED_SDPA. Under that name transformers builds no attention mask at
all, so the function refuses anything but a single packed row (no padding, no KV cache), which is what
the trainer gives it.
"""

from __future__ import annotations

from typing import Any

import torch

PACKED_SDPA = "labalign_packed_sdpa"
# Each sample is padded to a multiple of this. PyTorch 2.13's CPU kernel gives thread-count-dependent
# results (last bit) for odd lengths from 9 to 31 and none for multiples of 8 up to 512 (checked fp32
# and bf16, forward and backward, head dims 8 to 256), and training on 1 or 2 processes (1 or 2 threads
# each) should give the same model.
PAD_TO = 8
UNSUPPORTED = ("softcap", "position_bias", "s_aux")  # attention extras some families pass


def sample_bounds(position_ids: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) of each sample of a packed row: a sample starts where its position ids restart at 0."""
    starts = (position_ids == 0).nonzero().squeeze(1).tolist()
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    ends = [*starts[1:], int(position_ids.shape[0])]
    return list(zip(starts, ends, strict=True))


def _sliding_mask(length: int, window: int, device: torch.device) -> torch.Tensor:
    """transformers' sliding-window causal mask: key j is seen from query i when i - window < j <= i."""
    i = torch.arange(length, device=device)[:, None]
    j = torch.arange(length, device=device)[None, :]
    return ((j <= i) & (j > i - window))[None, None]


def packed_sdpa_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    position_ids: torch.Tensor | None = None,
    sliding_window: int | None = None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """(1, heads, T, dim) query/key/value of a packed row -> ((1, T, heads, dim) output, None)."""
    from transformers.integrations.sdpa_attention import repeat_kv

    if (
        attention_mask is not None
        or position_ids is None
        or position_ids.dim() != 2
        or query.shape[0] != 1
        or position_ids.shape[0] != 1
        or query.shape[2] != key.shape[2]
        or any(kwargs.get(name) is not None for name in UNSUPPORTED)
    ):
        raise RuntimeError(
            f"{PACKED_SDPA} runs one packed row without padding, KV cache or logit softcapping; load "
            "the model with attn_implementation='sdpa' or 'eager' for anything else"
        )
    # Key/value heads repeated, as transformers does for a masked row.
    groups = int(getattr(module, "num_key_value_groups", 1))
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    lengths = [end - start for start, end in sample_bounds(position_ids[0])]
    # split, not slicing: its backward is one concatenation, where each slice's backward would fill a
    # zeroed tensor of the whole row (that made the per-sample path as slow as the masked row).
    outputs = []
    for q, k, v in zip(*(torch.split(x, lengths, dim=2) for x in (query, key, value)), strict=True):
        length = q.shape[2]
        padded = -(-length // PAD_TO) * PAD_TO
        if padded != length:  # causal: the padding at the end is in no real query's view
            q, k, v = (torch.nn.functional.pad(x, (0, 0, 0, padded - length)) for x in (q, k, v))
        mask = None
        if sliding_window is not None and padded > sliding_window:
            mask = _sliding_mask(padded, sliding_window, query.device)
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=mask is None, scale=scaling
        )
        outputs.append(out[:, :, :length])
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


def register() -> None:
    """Make PACKED_SDPA an attn_implementation transformers accepts (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(PACKED_SDPA, packed_sdpa_forward)
