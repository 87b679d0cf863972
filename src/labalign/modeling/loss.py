"""Chunked cross-entropy through the LM head: the full (tokens x vocabulary) logits never exist.

With Gemma 3's 262k-token vocabulary, the logits of 2k tokens are 2 GB in fp32, more than the model.
The loss and its gradients are computed chunk by chunk in the forward pass (the gradient of a scalar
loss is known there), keeping only grad(hidden) and grad(head); backward scales them by the incoming
gradient. Only positions that carry a target are projected at all: prompts cost nothing here.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

IGNORE = -100  # the target of a position that is not trained (PyTorch's ignore_index)
ROW_BUCKET = 64
# Each chunk streams the whole head through the matmuls twice, so bigger chunks are faster until the
# logits stop fitting in memory: for Gemma 3 270M on 2 AVX2 cores the head's forward and backward over
# 550 targets took 6.6 s in chunks of 64 tokens (64 MB) and 4.4-4.9 s in chunks of 256 to 1024.
LOGITS_BYTES_PER_CHUNK = 256 * 2**20
# Probabilities below this are left out of the backward matmuls (see _significant_columns). Measured on
# Gemma 3 270M over 512 tokens of the example document (the untuned model: flatter than after a few
# steps): 2^-14 keeps 16k of 262k columns (6%) per chunk of 256 tokens, and grad(hidden) is within
# 0.7% of the exact one on average (5.5% at worst, in a row that spread 8% of its mass thinly); 2^-12,
# CCE's bf16 choice, kept 8k columns but erred by 1.9% (15% at worst).
GRAD_FILTER_EPS = 2.0**-14
MAX_KEPT_FRACTION = 0.5


@dataclass(frozen=True)
class HeadSpec:
    """The LM head and the transforms some families apply to its logits."""

    weight: torch.Tensor  # (V, H)
    bias: torch.Tensor | None = None
    scale: float = 1.0  # logits * scale (Cohere's logit_scale, 1 / Granite's logits_scaling)
    softcap: float | None = None  # softcap * tanh(logits / softcap) (Gemma 2)


def head_spec(model: nn.Module) -> HeadSpec:
    """The head of a causal LM (its output embeddings) and its config's logit transforms."""
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if not isinstance(head, nn.Linear):
        raise TypeError(f"{type(model).__name__} has no linear LM head")
    config: Any = getattr(model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    scale = 1.0
    if getattr(text_config, "logit_scale", None):
        scale *= float(text_config.logit_scale)
    if getattr(text_config, "logits_scaling", None):
        scale /= float(text_config.logits_scaling)
    softcap = getattr(text_config, "final_logit_softcapping", None)
    return HeadSpec(head.weight, head.bias, scale, float(softcap) if softcap else None)


def default_chunk_tokens(vocab_size: int) -> int:
    """About LOGITS_BYTES_PER_CHUNK of fp32 logits per chunk (256 tokens for a 262k vocabulary)."""
    tokens = LOGITS_BYTES_PER_CHUNK // (4 * max(vocab_size, 1))
    return max(ROW_BUCKET, min(8192, tokens // ROW_BUCKET * ROW_BUCKET))


def head_logits(
    h: torch.Tensor, w: torch.Tensor, spec: HeadSpec, out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits of a chunk, at least fp32 (written into `out` when given), and tanh for softcapping."""
    dtype = torch.promote_types(h.dtype, torch.float32)
    if out is not None and h.dtype == dtype:
        logits = torch.mm(h, w.T, out=out)
    elif out is not None:
        logits = out.copy_(h @ w.T)  # the matmul ran in the autocast dtype; the softmax is fp32
    else:
        logits = (h @ w.T).to(dtype)
    if spec.bias is not None:
        logits += spec.bias.to(logits.dtype)
    if spec.scale != 1.0:
        logits *= spec.scale
    tanh = None
    if spec.softcap is not None:
        tanh = torch.tanh(logits / spec.softcap)
        torch.mul(tanh, spec.softcap, out=logits)
    return logits, tanh


class _Buffers(threading.local):
    """One logits buffer per thread, reused across chunks and steps on CPU. A fresh 256 MB tensor is
    fresh pages from the OS, faulted in and zeroed on first write: with Gemma 3 270M on 2 AVX2 cores the
    head's 256-row matmul ran at 71 GFLOP/s into a new tensor and 94 into a reused one. (GPU allocators
    cache blocks already.)"""

    def __init__(self) -> None:
        self.logits: torch.Tensor | None = None

    def get(self, rows: int, cols: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
        if device.type != "cpu":
            return None
        buf = self.logits
        if buf is None or buf.dtype != dtype or buf.numel() < rows * cols:
            self.logits = buf = None  # freed before the next one is allocated
            self.logits = buf = torch.empty(rows * cols, dtype=dtype)
        return buf[: rows * cols].view(rows, cols)


_BUFFERS = _Buffers()


def _pad_rows(h: torch.Tensor) -> torch.Tensor:
    """Round the rows of a chunk up to a multiple of ROW_BUCKET. On CPU, oneDNN caches a primitive
    (with a re-laid-out copy of the head) per matmul shape: with a new row count in every micro-batch
    the process grew by the head's size each step. Bucketed shapes keep that cache small."""
    rows = h.shape[0]
    padded = -(-rows // ROW_BUCKET) * ROW_BUCKET
    if padded == rows:
        return h
    return torch.cat([h, h.new_zeros(padded - rows, h.shape[1])])


def _significant_columns(grads: torch.Tensor, targets: torch.Tensor, eps: float) -> torch.Tensor | None:
    """The vocabulary columns whose gradient matters for a chunk (its rows of softmax - onehot), or
    None for all of them.

    Gradient filtering (Wijmans et al. 2024, "Cut Your Losses in Large-Vocabulary Language Models"):
    d(CE)/d(logits) = softmax - onehot, and after the first steps nearly all of a 262k vocabulary has
    a probability far below `eps` in every row of a chunk. The backward matmuls then only need the
    few thousand columns above it, plus the targets (their onehot term).
    """
    if eps <= 0:
        return None
    keep = grads.amax(0) >= eps  # one pass, no (rows x vocabulary) bool tensor
    keep[targets] = True
    cols = keep.nonzero().squeeze(1)
    if cols.numel() > grads.shape[1] * MAX_KEPT_FRACTION:
        return None  # a gather of most columns costs more than it saves
    return cols


def _accumulate(total: torch.Tensor, cols: torch.Tensor | None, part: torch.Tensor) -> None:
    if cols is None:
        total += part
    else:
        total.index_add_(0, cols, part)


@dataclass
class HeadGrads:
    """Gradients of a chunked head loss w.r.t. (hidden, head weight, head bias), computed in forward
    (the loss is a scalar, so its gradient is known there) and scaled by the incoming gradient in
    backward. Shared by the cross-entropy and the KL anchor (labalign.train.kl)."""

    hidden: torch.Tensor | None
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    hidden_dtype: torch.dtype

    @property
    def any(self) -> bool:
        return self.hidden is not None or self.weight is not None or self.bias is not None

    @staticmethod
    def for_call(
        ctx: Any, grad_enabled: bool, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> HeadGrads:
        # (`grad_enabled` is the caller's grad mode: an autograd forward always runs with grad mode off.)
        need_h, need_w, need_b = (grad_enabled and bool(ctx.needs_input_grad[i]) for i in range(3))
        grad_dtype = torch.promote_types(weight.dtype, torch.float32)
        return HeadGrads(
            torch.empty_like(hidden) if need_h else None,
            torch.zeros(weight.shape, dtype=grad_dtype, device=weight.device) if need_w else None,
            torch.zeros(weight.shape[0], dtype=grad_dtype, device=weight.device)
            if need_b and bias is not None
            else None,
            hidden.dtype,
        )

    def save(self, ctx: Any, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        ctx.save_for_backward(self.hidden, self.weight, self.bias)
        ctx.param_dtypes = (weight.dtype, bias.dtype if bias is not None else None)

    @staticmethod
    def scaled(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_h, grad_w, grad_b = ctx.saved_tensors
        w_dtype, b_dtype = ctx.param_dtypes
        return (
            grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None,
            (grad_w * grad_out).to(w_dtype) if grad_w is not None else None,
            (grad_b * grad_out).to(b_dtype) if grad_b is not None else None,
        )


def head_backward(
    grad: torch.Tensor,
    tanh: torch.Tensor | None,
    spec: HeadSpec,
    cols: torch.Tensor | None,
    h: torch.Tensor,
    w: torch.Tensor,
    grads: HeadGrads,
    start: int,
    rows: int,
) -> None:
    """Push a chunk's d(loss)/d(logits) (`grad`, padded rows zero; modified in place) through the logit
    transforms and the head matmuls into `grads`, over the columns `cols` only (None: all)."""
    if tanh is not None:
        grad *= 1.0 - tanh * tanh
    if spec.scale != 1.0:
        grad *= spec.scale
    if cols is not None:
        grad = grad.index_select(1, cols)
        w_c = w.index_select(0, cols)
    else:
        w_c = w
    if grads.bias is not None:
        _accumulate(grads.bias, cols, grad.sum(0))
    grad_c = grad.to(w.dtype)
    if grads.hidden is not None:
        grads.hidden[start : start + rows] = (grad_c @ w_c)[:rows].to(grads.hidden_dtype)
    if grads.weight is not None:
        _accumulate(grads.weight, cols, (grad_c.T @ h).to(grads.weight.dtype))


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        spec: HeadSpec,
        chunk: int,
        compute_dtype: torch.dtype,
        grad_enabled: bool,
        grad_filter: float,
    ) -> torch.Tensor:
        # No gradients under no_grad/inference_mode (evaluation): the head's weight still has
        # requires_grad there, and its gradient would cost a second vocabulary-sized matmul per chunk
        # and a zeroed fp32 copy of the head per call (perplexity of 8.6k tokens on Gemma 3 270M took
        # 263 s with them, on 2 cores).
        grads = HeadGrads.for_call(ctx, grad_enabled, hidden, weight, bias)
        need_any = grads.any
        acc_dtype = torch.promote_types(hidden.dtype, torch.float32)
        total = torch.zeros((), dtype=acc_dtype, device=hidden.device)
        w = weight.to(compute_dtype)
        with torch.autocast(hidden.device.type, enabled=False):  # dtypes are chosen explicitly here
            for start in range(0, hidden.shape[0], chunk):
                h = hidden[start : start + chunk].to(compute_dtype)
                tgt = targets[start : start + chunk]
                rows = len(tgt)
                h = _pad_rows(h)
                out = _BUFFERS.get(h.shape[0], w.shape[0], acc_dtype, h.device)
                logits, tanh = head_logits(h, w, spec, out)
                # log-softmax and softmax in place, in fp32 (never bf16): logits - max, then exp.
                logits -= logits.amax(1, keepdim=True)
                shifted_target = logits[:rows].gather(1, tgt[:, None]).squeeze(1)
                exps = logits.exp_()
                sums = exps.sum(1, keepdim=True)
                total += (sums[:rows].squeeze(1).log() - shifted_target).sum()
                if not need_any:
                    continue
                # d(sum CE)/d(logits) = softmax - onehot.
                grad = exps.div_(sums)
                grad[torch.arange(rows, device=grad.device), tgt] -= 1.0
                grad[rows:] = 0.0  # padding rows contribute nothing
                cols = _significant_columns(grad[:rows], tgt, grad_filter)
                head_backward(grad, tanh, spec, cols, h, w, grads, start, rows)
        grads.save(ctx, weight, bias)
        return total

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return (*HeadGrads.scaled(ctx, grad_out), None, None, None, None, None, None)


def chunked_cross_entropy_sum(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    spec: HeadSpec,
    *,
    chunk_tokens: int | None = None,
    grad_filter: float = GRAD_FILTER_EPS,
) -> tuple[torch.Tensor, int]:
    """Sum of the cross-entropy of every target that is not IGNORE, and how many there are.

    `hidden`: (..., H) final hidden states (after the final norm); `targets`: (...) next-token ids.
    Differentiable w.r.t. hidden, head weight and bias. Under autocast the head matmuls run in the
    autocast dtype and the softmax in fp32, as in the model's own forward. The gradients leave out
    vocabulary entries whose probability is below `grad_filter` in every row of a chunk (0: exact).
    """
    flat_h = hidden.reshape(-1, hidden.shape[-1])
    flat_t = targets.reshape(-1)
    keep = (flat_t != IGNORE).nonzero().squeeze(1)
    h = flat_h.index_select(0, keep)
    t = flat_t.index_select(0, keep)
    device_type = hidden.device.type
    compute_dtype = (
        torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else h.dtype
    )
    chunk = chunk_tokens or default_chunk_tokens(spec.weight.shape[0])
    total = _ChunkedLinearCrossEntropy.apply(  # type: ignore[no-untyped-call]
        h, spec.weight, spec.bias, t, spec, chunk, compute_dtype, torch.is_grad_enabled(), grad_filter
    )
    return total, int(t.numel())
