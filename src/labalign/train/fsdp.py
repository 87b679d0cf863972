"""Fully sharded data parallelism with PyTorch's FSDP2 (`fully_shard`).

Each decoder layer is one unit of sharding and the root (embeddings, final norm, LM head; tied weights
stay together) another. Parameters become DTensors sharded on dim 0: a unit is all-gathered just
before its forward and its backward and freed after them, and gradients are reduce-scattered, so each
process holds 1/N of the weights, gradients and optimizer state. Frozen parameters (a LoRA base,
frozen embeddings) may share a unit with trainable ones: FSDP2 reduces only the gradients that exist.

Checkpoints keep the layout of an unsharded run (full tensors written by rank 0, the optimizer state
as `optimizer.state_dict()` numbers it), so a run resumes under ddp or fsdp and any process count.
Every function here that gathers or scatters is collective: all ranks call it, in the same order.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard


def decoder_layers(causal_lm: nn.Module) -> list[nn.Module]:
    """The repeated blocks to shard one by one: the outermost modules of the classes transformers
    lists in `_no_split_modules` (what accelerate's FSDP wraps), else the decoder's `layers`."""
    classes = set(getattr(causal_lm, "_no_split_modules", None) or ())
    found: list[tuple[str, nn.Module]] = []
    for name, module in causal_lm.named_modules():
        if type(module).__name__ in classes and not any(name.startswith(f"{p}.") for p, _ in found):
            found.append((name, module))
    if found:
        return [module for _, module in found]
    get_decoder = getattr(causal_lm, "get_decoder", None)
    layers = getattr(get_decoder(), "layers", None) if callable(get_decoder) else None
    return list(layers) if isinstance(layers, nn.ModuleList) else []


def mixed_precision(bf16: bool) -> MixedPrecisionPolicy:
    """bf16 all-gathers and compute when training in bf16 (half the traffic and unsharded memory);
    gradients are still reduced in fp32, since summing N ranks' bf16 gradients loses their low bits."""
    if not bf16:
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)


def shard(
    root: nn.Module, causal_lm: nn.Module, device: torch.device, world_size: int, *, bf16: bool
) -> None:
    """Shard `root` (which contains `causal_lm`) in place over all processes, layer by layer."""
    mesh = init_device_mesh(device.type, (world_size,))
    policy = mixed_precision(bf16)
    layers = decoder_layers(causal_lm)
    for i, layer in enumerate(layers):
        # The last layer's backward starts right after its forward: keeping it gathered saves a round.
        fully_shard(layer, mesh=mesh, mp_policy=policy, reshard_after_forward=i < len(layers) - 1)
    fully_shard(root, mesh=mesh, mp_policy=policy)


def reshard(root: nn.Module) -> None:
    """Free gathered weights after a forward without backward (evaluation): the root unit stays
    gathered otherwise, and its parameters would not be the optimizer's sharded ones."""
    for module in root.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def full_model_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """`module.state_dict()` with full CPU tensors on rank 0 (empty on other ranks). Names that share
    one parameter (a tied LM head) share one tensor again, as save_pretrained expects."""
    gathered = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    state = {name: value for name, value in gathered.items() if isinstance(value, torch.Tensor)}
    if state:
        first: dict[int, str] = {}
        for name, param in module.named_parameters(remove_duplicate=False):
            owner = first.setdefault(id(param), name)
            if owner != name and owner in state and name in state:
                state[name] = state[owner]
    return state


def load_weights(module: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy full tensors (every rank has them) into the matching sharded parameters of `module`."""
    # The loader replaces the dict's values with shards: hand it a copy.
    set_model_state_dict(module, dict(tensors), options=StateDictOptions(full_state_dict=True, strict=False))


def full_optimizer_state(
    module: nn.Module, optimizer: torch.optim.Optimizer, names: list[str]
) -> dict[str, Any]:
    """The optimizer state as an unsharded run's `optimizer.state_dict()` (parameters numbered in the
    order of `names`, the optimizer's), full CPU tensors on rank 0; empty on other ranks."""
    by_name: dict[str, Any] = get_optimizer_state_dict(
        module, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if not by_name:
        return {}
    index = {name: i for i, name in enumerate(names)}
    return {
        "state": {index[name]: value for name, value in by_name["state"].items()},
        "param_groups": [
            {**group, "params": [index[name] for name in group["params"]]}
            for group in by_name["param_groups"]
        ],
    }


def load_optimizer_state(
    module: nn.Module, optimizer: torch.optim.Optimizer, names: list[str], state: dict[str, Any]
) -> None:
    """Load a state saved by `full_optimizer_state` (or an unsharded run) into the sharded optimizer."""
    by_name: dict[str, Any] = {
        "state": {names[int(i)]: value for i, value in state["state"].items()},
        "param_groups": [
            {**group, "params": [names[int(i)] for i in group["params"]]} for group in state["param_groups"]
        ],
    }
    set_optimizer_state_dict(module, optimizer, by_name, options=StateDictOptions(full_state_dict=True))
