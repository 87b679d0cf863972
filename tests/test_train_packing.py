"""Packing: bin packing properties, and packed batches that equal the same samples run one by one
(no attention crosses a sample boundary, no target crosses one)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labalign.modeling.loss import IGNORE
from labalign.train.attention import PACKED_SDPA
from labalign.train.attention import register as register_packed_sdpa
from labalign.train.model import CausalLMLoss, Student
from labalign.train.packing import build_pack, epoch_order, pack_step, steps_of
from labalign.train.tokenize import TokenizedData
from tests.test_train_helpers import backward, tiny_model


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 64), min_size=0, max_size=60),
    capacity=st.integers(64, 200),
    world=st.integers(1, 4),
)
def test_pack_step_properties(lengths: list[int], capacity: int, world: int) -> None:
    indices = list(range(len(lengths)))
    plan = pack_step(indices, lengths, capacity, world)
    assert len(plan) == world
    assert len({len(micro) for micro in plan}) == 1  # same number of micro-batches on every rank
    flat = [i for micro in plan for b in micro for i in b]
    assert sorted(flat) == indices  # every sample exactly once
    loads = [sum(lengths[i] for i in b) for micro in plan for b in micro]
    assert max(loads) <= capacity
    if lengths:
        # Balanced: the fullest and the emptiest bin differ by at most the longest sample.
        assert max(loads) - min(loads) <= max(lengths)
        # Few bins: no more than first-fit-decreasing needs, rounded up to the world size, plus slack.
        lower = -(-sum(lengths) // capacity)
        assert len(loads) <= max(world, 2 * lower + world)


def test_pack_step_rejects_a_sample_over_budget() -> None:
    with pytest.raises(ValueError):
        pack_step([0], [10], 5)


def test_epoch_order_is_a_deterministic_permutation() -> None:
    a = epoch_order(50, seed=1, phase=1, epoch=0)
    assert a == epoch_order(50, seed=1, phase=1, epoch=0)
    assert sorted(a) == list(range(50))
    assert a != epoch_order(50, seed=1, phase=1, epoch=1)
    assert a != epoch_order(50, seed=1, phase=2, epoch=0)
    assert [len(s) for s in steps_of(a, 16)] == [16, 16, 16, 2]


def _data(lengths: list[int], vocab: int, seed: int = 0) -> TokenizedData:
    rng = np.random.default_rng(seed)
    ids = [rng.integers(3, vocab, n) for n in lengths]
    masks = [rng.random(n) < 0.6 for n in lengths]
    for m in masks:
        m[-1] = True  # at least one target per sample
    return TokenizedData(
        input_ids=np.concatenate(ids).astype(np.int64),
        supervised=np.concatenate(masks),
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        ids=[str(i) for i in range(len(lengths))],
        keys=[str(i) for i in range(len(lengths))],
    )


def test_build_pack_restarts_positions_and_shifts_targets_inside_samples() -> None:
    data = _data([4, 3], vocab=50)
    pack = build_pack(data, [0, 1])
    assert pack.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2]]
    ids, mask = data.sample(0)
    targets = pack.targets[0].tolist()
    assert targets[3] == IGNORE and targets[6] == IGNORE  # no target crosses into the next sample
    assert targets[:3] == [int(ids[i + 1]) if mask[i + 1] else IGNORE for i in range(3)]
    assert pack.target_tokens == int(data.target_counts().sum())
    empty = build_pack(data, [])
    assert empty.tokens == 0 and empty.targets.tolist() == [[IGNORE]]
    padded = build_pack(data, [0, 1], pad_to=16)
    assert padded.input_ids.shape == (1, 16) and padded.tokens == 7
    assert padded.position_ids[0, 7:].tolist() == list(range(9))  # the filler is a block of its own
    assert (padded.targets[0, 7:] == IGNORE).all() and padded.target_tokens == pack.target_tokens


def test_filler_block_changes_nothing() -> None:
    module = _loss_module("gemma3")
    data = _data([13, 30], vocab=module.causal_lm[0].config.vocab_size)
    with torch.no_grad():
        plain = build_pack(data, [0, 1])
        padded = build_pack(data, [0, 1], pad_to=64)
        a = module(plain.input_ids, plain.position_ids, plain.targets)[0]
        b = module(padded.input_ids, padded.position_ids, padded.targets)[0]
    assert float(a) == pytest.approx(float(b), rel=1e-6)


def _loss_module(arch: str, attn: str = "sdpa") -> CausalLMLoss:
    model = tiny_model(arch, seed=3)
    if attn == PACKED_SDPA:
        register_packed_sdpa()
    model.set_attn_implementation(attn)
    model.config.use_cache = False
    model.train()  # no dropout in these configs; train mode is what the trainer runs
    return CausalLMLoss(Student(model, None, None, source=None), chunk_tokens=7)  # type: ignore[arg-type]


def _loss_and_grads(module: CausalLMLoss, fn: Callable[[], torch.Tensor]) -> tuple[float, dict[str, Any]]:
    module.zero_grad(set_to_none=True)
    loss = fn()
    backward(loss)
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads


@pytest.mark.parametrize("attn", ["sdpa", PACKED_SDPA])
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_packed_batch_equals_samples_one_by_one(arch: str, attn: str) -> None:
    """fp32: a packed row of 4 samples gives the loss and gradients of running them separately (and
    of the model's own loss with labels, an independent reference). Gemma 3's sliding window (8) is
    shorter than the samples, so both local and global attention layers are exercised; PACKED_SDPA
    runs them one SDPA call per sample."""
    module = _loss_module(arch, attn)
    lengths = [13, 5, 21, 9]
    data = _data(lengths, vocab=module.causal_lm[0].config.vocab_size)
    total = int(data.target_counts().sum())

    def packed() -> torch.Tensor:
        pack = build_pack(data, range(4))
        loss_sum: torch.Tensor = module(pack.input_ids, pack.position_ids, pack.targets)[0]
        return loss_sum / total

    def one_by_one() -> torch.Tensor:
        parts = []
        for i in range(4):
            pack = build_pack(data, [i])
            parts.append(module(pack.input_ids, pack.position_ids, pack.targets)[0])
        return torch.stack(parts).sum() / total

    def hf_reference() -> torch.Tensor:
        lm = module.causal_lm[0]
        parts = []
        for i in range(4):
            ids, mask = data.sample(i)
            labels = torch.from_numpy(np.where(mask, ids, IGNORE))[None]
            n = int(data.target_counts()[i])
            parts.append(lm(input_ids=torch.from_numpy(ids)[None], labels=labels).loss * n)
        return torch.stack(parts).sum() / total

    loss_p, grads_p = _loss_and_grads(module, packed)
    loss_s, grads_s = _loss_and_grads(module, one_by_one)
    loss_hf, grads_hf = _loss_and_grads(module, hf_reference)
    assert loss_p == pytest.approx(loss_s, rel=1e-5) and loss_p == pytest.approx(loss_hf, rel=1e-5)
    assert grads_p.keys() == grads_s.keys() == grads_hf.keys() and len(grads_p) > 5
    for name in grads_p:
        torch.testing.assert_close(grads_p[name], grads_s[name], rtol=1e-4, atol=1e-6, msg=name)
        torch.testing.assert_close(grads_p[name], grads_hf[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("attn", ["sdpa", PACKED_SDPA])
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_no_attention_across_sample_boundaries(arch: str, attn: str) -> None:
    """Changing the first sample of a pack changes none of the second sample's hidden states; the
    same pack with continuous positions (plain causal attention) does leak, so the probe can fail."""
    module = _loss_module(arch, attn)
    data = _data([10, 12], vocab=module.causal_lm[0].config.vocab_size, seed=5)
    pack = build_pack(data, [0, 1])
    other = pack.input_ids.clone()
    other[0, 1:10] = (other[0, 1:10] + 7) % module.causal_lm[0].config.vocab_size
    with torch.no_grad():
        base = module.hidden_states(pack.input_ids, pack.position_ids)
        changed = module.hidden_states(other, pack.position_ids)
        assert not torch.allclose(base[0, :10], changed[0, :10])
        torch.testing.assert_close(base[0, 10:], changed[0, 10:], rtol=0, atol=1e-6)
        alone = module.hidden_states(pack.input_ids[:, 10:], pack.position_ids[:, 10:])
        torch.testing.assert_close(base[0, 10:], alone[0], rtol=1e-5, atol=1e-5)
        continuous = torch.arange(22)[None]
        leak_a = module.hidden_states(pack.input_ids, continuous)
        leak_b = module.hidden_states(other, continuous)
        assert not torch.allclose(leak_a[0, 10:], leak_b[0, 10:], atol=1e-4)
