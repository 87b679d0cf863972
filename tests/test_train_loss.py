"""Chunked cross-entropy: the same loss and gradients as full logits, without materializing them."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labalign.modeling.loss import (
    IGNORE,
    HeadSpec,
    chunked_cross_entropy_sum,
    default_chunk_tokens,
    head_spec,
)
from tests.test_train_helpers import backward, tiny_model


def reference_logits(h: torch.Tensor, spec: HeadSpec) -> torch.Tensor:
    """The head's logits the plain way (full matrix), with the family's transforms."""
    logits = h @ spec.weight.T
    if spec.bias is not None:
        logits = logits + spec.bias
    logits = logits * spec.scale
    if spec.softcap is not None:
        logits = spec.softcap * torch.tanh(logits / spec.softcap)
    return logits


def _reference(h: torch.Tensor, t: torch.Tensor, spec: HeadSpec) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(
        reference_logits(h, spec), t, ignore_index=IGNORE, reduction="sum"
    )


def _grads(fn: object, tensors: list[torch.Tensor]) -> tuple[float, list[torch.Tensor]]:
    for x in tensors:
        x.grad = None
    loss = fn()  # type: ignore[operator]
    backward(loss)
    return float(loss.detach()), [x.grad.clone() for x in tensors if x.grad is not None]


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 70),
    vocab=st.integers(2, 90),
    chunk=st.integers(1, 80),
    bias=st.booleans(),
    softcap=st.sampled_from([None, 3.0]),
    scale=st.sampled_from([1.0, 0.5]),
    seed=st.integers(0, 2**16),
)
def test_chunked_equals_full_logits(
    n: int, vocab: int, chunk: int, bias: bool, softcap: float | None, scale: float, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, 6, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(vocab, 6, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(vocab, dtype=torch.float64, generator=g, requires_grad=True) if bias else None
    t = torch.randint(0, vocab, (n,), generator=g)
    t[torch.rand(n, generator=g) < 0.3] = IGNORE
    spec = HeadSpec(w, b, scale, softcap)
    params = [h, w] + ([b] if b is not None else [])
    ours, ours_grads = _grads(
        lambda: chunked_cross_entropy_sum(h, t, spec, chunk_tokens=chunk, grad_filter=0.0)[0], params
    )
    ref, ref_grads = _grads(lambda: _reference(h, t, spec), params)
    assert ours == pytest.approx(ref, rel=1e-9, abs=1e-9)
    assert len(ours_grads) == len(ref_grads) == len(params)
    for a, r in zip(ours_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-8, atol=1e-10)


def test_gradient_filter_drops_only_improbable_columns() -> None:
    # A peaked softmax over a 4096-token vocabulary, as a trained LM's: most columns are far below the
    # filter in every row, so their gradient is skipped; what is kept is exact, the rest tiny.
    g = torch.Generator().manual_seed(3)
    vocab, n = 4096, 40
    h = torch.randn(n, 16, dtype=torch.float64, generator=g, requires_grad=True)
    w = (3 * torch.randn(vocab, 16, dtype=torch.float64, generator=g)).requires_grad_()
    t = (h.detach() @ w.detach().T).argmax(1)  # targets the model already likes, as after some training
    t[::4] = torch.randint(0, vocab, (10,), generator=g)  # and some it does not
    spec = HeadSpec(w)
    eps = 2.0**-14
    ours, (gh, gw) = _grads(lambda: chunked_cross_entropy_sum(h, t, spec, grad_filter=eps)[0], [h, w])
    ref, (rh, rw) = _grads(lambda: _reference(h, t, spec), [h, w])
    assert ours == pytest.approx(ref, rel=1e-12)  # the loss itself is never filtered
    probs = torch.softmax(h.detach() @ w.detach().T, dim=1)
    kept = (probs >= eps).any(0)
    kept[t] = True
    assert 0 < int(kept.sum()) < vocab // 2
    assert torch.count_nonzero(gw[~kept]) == 0  # skipped columns: no head gradient at all
    torch.testing.assert_close(gw[kept], rw[kept], rtol=1e-10, atol=1e-12)
    dropped = probs[:, ~kept].sum(1)  # grad(h) misses at most dropped mass x the largest head row
    bound = dropped * w.detach().norm(dim=1).max()
    assert torch.all((gh - rh).norm(dim=1) <= bound + 1e-12)
    assert float((gh - rh).norm() / rh.norm()) < 1e-3


def test_normalisation_is_per_token_over_the_whole_batch() -> None:
    """Two micro-batches each divided by the step's total targets equal one batch's mean: every
    supervised token weighs the same (a mean of per-micro-batch means would not)."""
    torch.manual_seed(0)
    h = torch.randn(30, 8, requires_grad=True)
    w = torch.randn(50, 8)
    t = torch.randint(0, 50, (30,))
    t[:20:2] = IGNORE  # uneven targets per half
    spec = HeadSpec(w)
    total = int((t != IGNORE).sum())
    parts = [chunked_cross_entropy_sum(h[a:b], t[a:b], spec)[0] / total for a, b in ((0, 11), (11, 30))]
    summed = torch.stack(parts).sum()
    backward(summed)
    assert h.grad is not None
    grad_parts = h.grad.clone()
    h.grad = None
    mean = torch.nn.functional.cross_entropy(h @ w.T, t, ignore_index=IGNORE)
    backward(mean)
    assert float(summed.detach()) == pytest.approx(float(mean.detach()), rel=1e-6)
    torch.testing.assert_close(grad_parts, h.grad)
    with torch.no_grad():
        halves = [
            torch.nn.functional.cross_entropy(h[a:b] @ w.T, t[a:b], ignore_index=IGNORE)
            for a, b in ((0, 11), (11, 30))
        ]
    assert float(torch.stack(halves).mean()) != pytest.approx(float(mean.detach()), rel=1e-3)


def test_no_targets_gives_zero_loss_and_zero_gradients() -> None:
    h = torch.randn(5, 4, requires_grad=True)
    w = torch.randn(10, 4, requires_grad=True)
    loss, count = chunked_cross_entropy_sum(h, torch.full((5,), IGNORE), HeadSpec(w))
    backward(loss)
    assert count == 0 and float(loss.detach()) == 0.0
    assert h.grad is not None and w.grad is not None
    assert not h.grad.any() and not w.grad.any()


def test_frozen_head_gets_no_gradient_buffer_and_no_grad_path_matches() -> None:
    h = torch.randn(12, 4, requires_grad=True)
    w = torch.randn(10, 4)  # frozen head: only grad(hidden) is computed
    t = torch.randint(0, 10, (12,))
    loss, _ = chunked_cross_entropy_sum(h, t, HeadSpec(w), chunk_tokens=5)
    backward(loss)
    assert h.grad is not None and w.grad is None
    with torch.no_grad():
        eval_loss, _ = chunked_cross_entropy_sum(h, t, HeadSpec(w), chunk_tokens=5)
    assert float(eval_loss) == pytest.approx(float(loss.detach()), rel=1e-6)


def test_no_grad_does_no_gradient_work_even_for_a_trainable_head() -> None:
    """Evaluation (perplexity) runs under no_grad with the model's head still requiring grad: only the
    logits matmul may run, not the gradient matmuls."""
    from torch.utils.flop_counter import FlopCounterMode

    h, t = torch.randn(64, 8), torch.randint(0, 50, (64,))
    w = torch.randn(50, 8, requires_grad=True)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        loss, n = chunked_cross_entropy_sum(h, t, HeadSpec(w), chunk_tokens=64)
    assert n == 64 and counter.get_total_flops() == 2 * 64 * 8 * 50
    assert float(loss) == pytest.approx(float(_reference(h, t, HeadSpec(w.detach()))), rel=1e-5)
    with FlopCounterMode(display=False) as counter:  # with grad mode on, the gradients are computed
        chunked_cross_entropy_sum(h, t, HeadSpec(w), chunk_tokens=64)
    assert counter.get_total_flops() == 2 * (2 * 64 * 8 * 50)


def test_bf16_autocast_stays_close_to_fp32() -> None:
    torch.manual_seed(1)
    h = torch.randn(64, 32, requires_grad=True)
    w = torch.randn(300, 32) * 0.2
    t = torch.randint(0, 300, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = chunked_cross_entropy_sum(h, t, HeadSpec(w), chunk_tokens=16)
    backward(loss)
    assert h.grad is not None and h.grad.dtype == torch.float32
    ref = _reference(h.detach(), t, HeadSpec(w))
    assert float(loss.detach()) == pytest.approx(float(ref), rel=2e-2)


def test_chunk_size_keeps_logits_near_256_mb() -> None:
    assert default_chunk_tokens(262_144) == 256
    assert default_chunk_tokens(32_000) == 2048  # whole buckets of 64 rows
    assert default_chunk_tokens(400) == 8192


def test_head_spec_reads_the_model_config() -> None:
    gemma = tiny_model("gemma3", final_logit_softcapping=30.0)
    spec = head_spec(gemma)
    assert spec.softcap == 30.0 and spec.weight is gemma.get_output_embeddings().weight
    assert head_spec(tiny_model("llama")).softcap is None
