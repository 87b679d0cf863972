"""The KL anchor: KL(base || tuned) through the chunked head, exact against full logits."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labalign.modeling.loss import HeadSpec
from labalign.train.kl import chunked_kl_sum
from tests.test_train_helpers import backward
from tests.test_train_loss import _grads, reference_logits


def _coarse_kl(tuned: torch.Tensor, base_lp: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """KL between the two distributions over (the base's top-k tokens, everything else), by autograd."""
    lp = torch.log_softmax(tuned, -1)
    top_t = lp.gather(1, ids)
    tail_t = torch.log1p(-top_t.exp().sum(1).clamp(max=1 - 1e-15))
    top_b = base_lp.exp()
    tail_b = (1 - top_b.sum(1)).clamp(min=0)
    return ((top_b * (base_lp - top_t)).sum(1) + torch.xlogy(tail_b, tail_b) - tail_b * tail_t).sum()


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 50),
    vocab=st.integers(3, 60),
    k=st.integers(1, 60),
    chunk=st.integers(1, 64),
    bias=st.booleans(),
    softcap=st.sampled_from([None, 3.0]),
    seed=st.integers(0, 2**16),
)
def test_kl_equals_full_logits(
    n: int, vocab: int, k: int, chunk: int, bias: bool, softcap: float | None, seed: int
) -> None:
    k = min(k, vocab)
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, 6, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(vocab, 6, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(vocab, dtype=torch.float64, generator=g, requires_grad=True) if bias else None
    spec = HeadSpec(w, b, 1.0, softcap)
    base = torch.log_softmax(torch.randn(n, vocab, dtype=torch.float64, generator=g) * 2, -1)
    top = base.topk(k, -1)
    params = [h, w] + ([b] if b is not None else [])
    ours, ours_grads = _grads(
        lambda: chunked_kl_sum(h, top.indices, top.values, spec, chunk_tokens=chunk, grad_filter=0.0), params
    )
    ref, ref_grads = _grads(lambda: _coarse_kl(reference_logits(h, spec), top.values, top.indices), params)
    assert ours == pytest.approx(ref, rel=1e-7, abs=1e-9)
    for a, r in zip(ours_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-6, atol=1e-8)


def test_full_top_k_is_the_exact_kl_and_zero_at_the_base() -> None:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(7, 5, dtype=torch.float64, generator=g)
    w = torch.randn(11, 5, dtype=torch.float64, generator=g)
    spec = HeadSpec(w)
    tuned = torch.log_softmax(h @ w.T, -1)
    base = torch.log_softmax(torch.randn(7, 11, dtype=torch.float64, generator=g), -1)
    top = base.topk(11, -1)
    exact = (base.exp() * (base - tuned)).sum()
    assert float(chunked_kl_sum(h, top.indices, top.values, spec)) == pytest.approx(float(exact), rel=1e-9)
    # The tuned model's own distribution as the base: no divergence, whatever k.
    own = tuned.topk(4, -1)
    assert float(chunked_kl_sum(h, own.indices, own.values, spec)) == pytest.approx(0.0, abs=1e-9)


def test_gradient_pulls_the_tuned_model_toward_the_base() -> None:
    g = torch.Generator().manual_seed(1)
    h = torch.randn(16, 8, generator=g, requires_grad=True)
    w = torch.randn(40, 8, generator=g)
    spec = HeadSpec(w)
    base = torch.log_softmax(torch.randn(16, 40, generator=g) * 3, -1).topk(8, -1)
    before = float(chunked_kl_sum(h.detach(), base.indices, base.values, spec))
    opt = torch.optim.SGD([h], lr=0.5)
    for _ in range(20):
        opt.zero_grad()
        backward(chunked_kl_sum(h, base.indices, base.values, spec))
        opt.step()
    after = float(chunked_kl_sum(h.detach(), base.indices, base.values, spec))
    assert after < 0.5 * before
