"""The distillation anchor: KL(base || tuned) over the vocabulary, chunked through the LM head like the
cross-entropy (labalign.modeling.loss), against the base model's top-k next-token log-probabilities.

The base's distribution is stored as its k most likely tokens per position plus the rest of its mass
as one "tail" outcome (precomputed once per replay set: labalign.train.anchor). The KL is then taken
between the two distributions coarsened to those k + 1 outcomes, which is exact on the top-k and a
lower bound overall. Its gradient w.r.t. the tuned logits is p_tuned - q, where q is the base's
probability on the top-k and the tuned model's own tail shape rescaled to the base's tail mass: what the
tail misses is its shape, not its weight.

Unlike cross-entropy on sampled text (plain replay), the target is a whole distribution: nothing can
be memorised, and each token pulls the tuned model toward everything the base would have said.
"""

from __future__ import annotations

from typing import Any

import torch

from labalign.modeling.loss import (
    _BUFFERS,
    GRAD_FILTER_EPS,
    MAX_KEPT_FRACTION,
    HeadGrads,
    HeadSpec,
    _pad_rows,
    default_chunk_tokens,
    head_backward,
    head_logits,
)

TINY = 1e-12


def _kept_columns(grad: torch.Tensor, top_ids: torch.Tensor, eps: float) -> torch.Tensor | None:
    """Gradient filtering as for the cross-entropy, on |grad| (the tail's gradient can be negative)."""
    if eps <= 0:
        return None
    keep = grad.abs().amax(0) >= eps
    keep[top_ids.reshape(-1)] = True
    cols = keep.nonzero().squeeze(1)
    return None if cols.numel() > grad.shape[1] * MAX_KEPT_FRACTION else cols


class _ChunkedLinearKL(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        top_ids: torch.Tensor,
        top_logp: torch.Tensor,
        spec: HeadSpec,
        chunk: int,
        compute_dtype: torch.dtype,
        grad_enabled: bool,
        grad_filter: float,
    ) -> torch.Tensor:
        grads = HeadGrads.for_call(ctx, grad_enabled, hidden, weight, bias)
        acc_dtype = torch.promote_types(hidden.dtype, torch.float32)
        total = torch.zeros((), dtype=acc_dtype, device=hidden.device)
        w = weight.to(compute_dtype)
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], chunk):
                ids = top_ids[start : start + chunk]
                base_lp = top_logp[start : start + chunk].to(acc_dtype)
                rows = len(ids)
                h = _pad_rows(hidden[start : start + chunk].to(compute_dtype))
                out = _BUFFERS.get(h.shape[0], w.shape[0], acc_dtype, h.device)
                logits, tanh = head_logits(h, w, spec, out)
                logits -= logits.amax(1, keepdim=True)
                shifted_top = logits[:rows].gather(1, ids)
                exps = logits.exp_()
                sums = exps.sum(1, keepdim=True)
                tuned_lp = shifted_top - sums[:rows].log()  # log p_tuned on the base's top-k
                tuned_top = tuned_lp.exp()
                tuned_tail = (1.0 - tuned_top.sum(1)).clamp_min(TINY)
                base_top = base_lp.exp()
                base_tail = (1.0 - base_top.sum(1)).clamp_min(0.0)
                kl = (base_top * (base_lp - tuned_lp)).sum(1) + torch.xlogy(base_tail, base_tail)
                kl = kl - base_tail * tuned_tail.log()
                total += kl.sum()
                if not grads.any:
                    continue
                # d(KL)/d(logits) = p_tuned - q: on the tail q = p_tuned * base_tail / tuned_tail.
                grad = exps.div_(sums)
                grad[:rows] *= (1.0 - base_tail / tuned_tail)[:, None]
                grad[:rows].scatter_(1, ids, tuned_top - base_top)
                grad[rows:] = 0.0
                cols = _kept_columns(grad[:rows], ids, grad_filter)
                head_backward(grad, tanh, spec, cols, h, w, grads, start, rows)
        grads.save(ctx, weight, bias)
        return total

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return (*HeadGrads.scaled(ctx, grad_out), None, None, None, None, None, None, None)


def chunked_kl_sum(
    hidden: torch.Tensor,
    top_ids: torch.Tensor,
    top_logp: torch.Tensor,
    spec: HeadSpec,
    *,
    chunk_tokens: int | None = None,
    grad_filter: float = GRAD_FILTER_EPS,
) -> torch.Tensor:
    """Sum over rows of KL(base || tuned), coarsened to the base's top-k and a tail.

    `hidden`: (N, H) the tuned model's final hidden states at the anchored positions; `top_ids` (N, k)
    and `top_logp` (N, k): the base's most likely next tokens there and their log-probabilities.
    Differentiable w.r.t. hidden, head weight and bias (gradients filtered as for the cross-entropy).
    """
    device_type = hidden.device.type
    compute_dtype = (
        torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
    )
    chunk = chunk_tokens or default_chunk_tokens(spec.weight.shape[0])
    total: torch.Tensor = _ChunkedLinearKL.apply(  # type: ignore[no-untyped-call]
        hidden,
        spec.weight,
        spec.bias,
        top_ids.long(),
        top_logp,
        spec,
        chunk,
        compute_dtype,
        torch.is_grad_enabled(),
        grad_filter,
    )
    return total
