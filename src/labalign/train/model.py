"""The student: load an HF causal LM (+ tokenizer, chat template), freeze or wrap it in LoRA, and run it
as a loss module (hidden states from the decoder, chunked cross-entropy through the head)."""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from labalign.errors import LabalignError
from labalign.llm.hf import native_bf16
from labalign.modeling.loss import HeadSpec, chunked_cross_entropy_sum, head_logits, head_spec
from labalign.modeling.models import load_tokenizer
from labalign.settings.train import TrainSettings
from labalign.train import attention

ADAPTER = "default"


def bf16_enabled(setting: str, device: torch.device) -> bool:
    """bf16 autocast where the hardware does it natively (on CPUs without it, emulation is slower)."""
    if setting != "auto":
        return setting == "on"
    return native_bf16(device.type)


def attn_implementation(setting: str | None, device: torch.device) -> str:
    if setting:
        return setting
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"  # varlen kernels: packed samples cost no mask at all
    if device.type == "cpu":
        attention.register()
        return attention.PACKED_SDPA  # one SDPA call per sample instead of a masked row (2.2x faster)
    return "sdpa"


@dataclass
class Student:
    """The model being trained. `causal_lm` is the transformers model (with LoRA layers injected when
    `peft_model` is set); `peft_model` wraps it for saving adapters."""

    causal_lm: Any
    tokenizer: Any
    peft_model: Any | None
    source: Path

    @property
    def module(self) -> nn.Module:
        """The top module: its trainable parameters are what the optimizer and checkpoints hold."""
        return self.peft_model if self.peft_model is not None else self.causal_lm  # type: ignore[no-any-return]

    def trainable(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.module.named_parameters() if p.requires_grad}


def load_student(
    path: Path, settings: TrainSettings, *, device: torch.device, bf16: bool, seed: int
) -> Student:
    """Load for training: fp32 weights to train (bf16 autocast computes), or with LoRA a frozen base in
    bf16 (no fp32 copy needed) under fp32 adapters."""
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(path)
    dtype = torch.bfloat16 if (settings.lora and bf16) else torch.float32
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(
            str(path),
            dtype=dtype,
            attn_implementation=attn_implementation(settings.attn_implementation, device),
        )
    except (OSError, ValueError) as exc:
        raise LabalignError(
            f"cannot load the model: {exc}", path=path, hint="pass a Hugging Face causal LM directory"
        ) from exc
    model.config.use_cache = False  # a KV cache would also disable packed-sequence masking
    model.to(device)
    if settings.gradient_checkpointing:
        # Non-reentrant: works with frozen inputs (LoRA, frozen embeddings) and with DDP's no_sync.
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:  # transformers < 5.x
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if settings.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    peft_model = None
    if settings.lora:
        from peft import LoraConfig, get_peft_model

        names = settings.lora_target_modules
        targets: str | list[str] = (
            names if names == "all-linear" else [t.strip() for t in names.split(",") if t.strip()]
        )
        if settings.lora_layers is not None:
            targets = _in_top_layers(model, targets, settings.lora_layers, path)
        config = LoraConfig(
            r=settings.lora_rank,
            lora_alpha=settings.lora_alpha,
            lora_dropout=settings.lora_dropout,
            target_modules=targets,
            task_type="CAUSAL_LM",
        )
        torch.manual_seed(seed)  # adapter init is part of the run's determinism
        with warnings.catch_warnings():
            # peft still asks for transformers' deprecated `is_gradient_checkpointing`.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            peft_model = get_peft_model(model, config, autocast_adapter_dtype=True)
    model.train()
    student = Student(causal_lm=model, tokenizer=tokenizer, peft_model=peft_model, source=path)
    if not student.trainable():
        raise LabalignError("nothing to train: every parameter is frozen", hint="check lora_target_modules")
    verify_head(student)
    return student


def _in_top_layers(model: Any, targets: str | list[str], count: int, path: Path) -> list[str]:
    """The full names of the target linear modules in the top `count` decoder layers. Nothing below the
    lowest adapted layer needs a gradient, so autograd's backward ends there. (peft's own
    layers_to_transform refuses "all-linear".)"""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    layers = int(getattr(config, "num_hidden_layers", 0))
    if not 1 <= count <= layers:
        raise LabalignError(
            f"lora_layers is {count} but the model has {layers} decoder layers",
            path=path,
            hint=f"set train.lora_layers between 1 and {layers}, or unset it for all",
        )
    top = {str(i) for i in range(layers - count, layers)}
    chosen = []
    for name, module in model.get_decoder().named_modules():
        parts = name.split(".")
        if not isinstance(module, nn.Linear) or len(parts) < 3 or parts[0] != "layers" or parts[1] not in top:
            continue
        if targets == "all-linear" or parts[-1] in targets:
            chosen.append(name)
    if not chosen:
        raise LabalignError(
            f"no module of the top {count} layers matches lora_target_modules={targets!r}",
            path=path,
            hint="check lora_target_modules",
        )
    return chosen


class CausalLMLoss(nn.Module):
    """forward(packed batch) -> (sum of token losses, number of loss-bearing positions): the module DDP
    wraps. The sum is the cross-entropy of every target plus `kl_weight` x KL(base || tuned) at every
    anchored position (labalign.train.kl), so one backward serves both."""

    def __init__(self, student: Student, chunk_tokens: int | None, kl_weight: float = 0.0) -> None:
        super().__init__()
        self.student_module = student.module  # registered so DDP/FSDP see the parameters
        self.causal_lm = [student.causal_lm]  # a list: not registered twice
        self.chunk_tokens = chunk_tokens
        self.kl_weight = kl_weight

    def hidden_states(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        decoder = self.causal_lm[0].get_decoder()
        out = decoder(input_ids=input_ids, position_ids=position_ids, use_cache=False)
        hidden: torch.Tensor = out.last_hidden_state
        return hidden

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        targets: torch.Tensor,
        kl_index: torch.Tensor | None = None,
        kl_ids: torch.Tensor | None = None,
        kl_logp: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.hidden_states(input_ids, position_ids)
        spec = head_spec(self.causal_lm[0])
        total, count = chunked_cross_entropy_sum(hidden, targets, spec, chunk_tokens=self.chunk_tokens)
        if kl_index is not None and kl_ids is not None and kl_logp is not None and self.kl_weight > 0:
            from labalign.train.kl import chunked_kl_sum

            anchored = hidden.reshape(-1, hidden.shape[-1]).index_select(0, kl_index)
            kl = chunked_kl_sum(anchored, kl_ids, kl_logp, spec, chunk_tokens=self.chunk_tokens)
            total = total + self.kl_weight * kl.to(total.dtype)
            count += int(kl_index.numel())
        return total, torch.tensor(count, device=total.device)


@torch.no_grad()
def verify_head(student: Student) -> None:
    """Check that decoder + head reproduce the model's own logits, so a family with an unknown logit
    transform fails loudly instead of training on a wrong loss."""
    lm = student.causal_lm
    device = next(lm.parameters()).device
    vocab = lm.get_output_embeddings().weight.shape[0]
    ids = (torch.arange(8, device=device) * 7919 % vocab).unsqueeze(0)
    positions = torch.arange(8, device=device).unsqueeze(0)
    was_training = lm.training
    lm.eval()
    try:
        expected = lm(input_ids=ids, position_ids=positions, use_cache=False).logits.float()
        spec: HeadSpec = head_spec(lm)
        hidden = lm.get_decoder()(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state
        ours, _ = head_logits(hidden[0], spec.weight, spec)
    finally:
        lm.train(was_training)
    if not torch.allclose(
        ours.float(), expected[0], rtol=1e-3, atol=1e-3 * float(expected.abs().max()) + 1e-4
    ):
        raise LabalignError(
            f"{type(lm).__name__}: the LM head applies a logit transform labalign does not know",
            path=student.source,
            hint="report the model family",
        )


def merged_state_dict(
    student: Student, state: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The causal LM's weights with LoRA deltas folded in, computed out of place (merging in place and
    unmerging would perturb the base weights, and a resumed run would no longer match).

    `state` is the causal LM's full state dict (gathered from shards under FSDP); by default its own.
    Deltas are computed from the adapter tensors in it, as peft's `get_delta_weight` does, in fp32.
    """
    lm = student.causal_lm
    state = dict(lm.state_dict()) if state is None else state
    if student.peft_model is None:
        return state
    from peft.tuners.lora import Embedding as LoraEmbedding
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.lora import LoraLayer

    merged = {k.replace(".base_layer.", "."): v for k, v in state.items() if "lora_" not in k}
    for name, module in lm.named_modules():
        if not isinstance(module, LoraLayer) or ADAPTER not in module.scaling:
            continue
        if module.use_dora.get(ADAPTER):
            raise LabalignError(f"{name}: DoRA adapters cannot be merged", hint="train plain LoRA")
        if isinstance(module, LoraLinear):
            a, b = state[f"{name}.lora_A.{ADAPTER}.weight"], state[f"{name}.lora_B.{ADAPTER}.weight"]
            transpose = bool(module.fan_in_fan_out)
        elif isinstance(module, LoraEmbedding):
            a, b = state[f"{name}.lora_embedding_A.{ADAPTER}"], state[f"{name}.lora_embedding_B.{ADAPTER}"]
            transpose = True
        else:
            raise LabalignError(
                f"{name}: LoRA on {type(module).__name__} cannot be merged",
                hint="target linear layers (lora_target_modules) or pass --no-merge-lora",
            )
        delta = (b.float() @ a.float()) * module.scaling[ADAPTER]
        weight = state[f"{name}.base_layer.weight"]
        merged[f"{name}.weight"] = (weight.float() + (delta.T if transpose else delta)).to(weight.dtype)
    return merged
