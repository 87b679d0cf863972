"""FSDP pieces that need no process group: which mode runs, what is sharded layer by layer, and the LoRA
merge from a (gathered) state dict. The multi-process runs are in tests/test_train_processes.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from labalign.settings.train import TrainSettings
from labalign.train.distributed import DistContext, parallelism
from labalign.train.fsdp import decoder_layers
from labalign.train.model import Student, load_student, merged_state_dict
from tests.test_train_helpers import tiny_model, tiny_model_dir


@pytest.mark.parametrize(
    ("setting", "world", "device", "expected"),
    [
        ("auto", 1, "cpu", "none"),
        ("fsdp", 1, "cuda", "none"),  # one process: nothing to shard over
        ("auto", 2, "cpu", "ddp"),
        ("auto", 4, "cuda", "fsdp"),
        ("fsdp", 2, "cpu", "fsdp"),
        ("ddp", 8, "cuda", "ddp"),
    ],
)
def test_parallelism(setting: str, world: int, device: str, expected: str) -> None:
    ctx = DistContext(world_size=world, local_world_size=world, device=torch.device(device))
    assert parallelism(setting, ctx) == expected


def test_distributed_setting_is_checked() -> None:
    assert TrainSettings(distributed="fsdp").distributed == "fsdp"
    with pytest.raises(ValidationError):
        TrainSettings(distributed="zero3")


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_decoder_layers_are_the_repeated_blocks(arch: str) -> None:
    model = tiny_model(arch)
    layers = decoder_layers(model)
    assert layers and [id(m) for m in layers] == [id(m) for m in model.model.layers]


def test_decoder_layers_under_lora_and_without_no_split_modules(tmp_path: Path) -> None:
    model_dir = tiny_model_dir(tmp_path / "model")
    student = load_student(
        model_dir, TrainSettings(lora=True), device=torch.device("cpu"), bf16=False, seed=0
    )
    layers = decoder_layers(student.causal_lm)
    assert [id(m) for m in layers] == [id(m) for m in student.causal_lm.model.layers]
    student.causal_lm._no_split_modules = None  # a family that does not name its blocks
    assert [id(m) for m in decoder_layers(student.causal_lm)] == [id(m) for m in layers]


def test_decoder_layers_take_the_outermost_match() -> None:
    class Inner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(2, 2)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = Inner()

    class Net(nn.Module):
        _no_split_modules = ("Block", "Inner")

        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList([Block(), Block()])
            self.extra = Inner()

    net = Net()
    assert [id(m) for m in decoder_layers(net)] == [id(net.blocks[0]), id(net.blocks[1]), id(net.extra)]


def _randomize_adapters(module: nn.Module) -> None:
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.5)  # B starts at zero: make the adapters matter


def _merged_matches(student: Student, fresh: nn.Module, ids: torch.Tensor) -> None:
    """Loading the merged state into a plain copy of the model gives the LoRA model's logits."""
    with torch.no_grad():
        expected = student.causal_lm(input_ids=ids).logits
        merged = merged_state_dict(student)
        assert not any("lora_" in k or "base_layer" in k for k in merged)
        missing, unexpected = fresh.load_state_dict(merged, strict=False)
        assert not unexpected and all("lm_head" in k for k in missing)  # a tied head is not repeated
        got: Any = fresh(input_ids=ids)
    torch.testing.assert_close(got.logits, expected, rtol=1e-5, atol=1e-5)


def test_merge_of_lora_on_embeddings(tmp_path: Path) -> None:
    """Embedding adapters (lora_embedding_A/B, delta transposed), on an untied model: with a tied head
    the merged embedding would change the head too."""
    from transformers import AutoModelForCausalLM

    model_dir = tiny_model_dir(tmp_path / "model", tie=False)
    settings = TrainSettings(lora=True, lora_target_modules="embed_tokens,q_proj")
    student = load_student(model_dir, settings, device=torch.device("cpu"), bf16=False, seed=0)
    assert any("lora_embedding_A" in n for n in student.trainable())
    _randomize_adapters(student.module)
    fresh = AutoModelForCausalLM.from_pretrained(model_dir)
    _merged_matches(student, fresh, torch.tensor([[1, 5, 9, 30, 7, 8]]))


def test_merge_of_lora_on_fan_in_fan_out_layers() -> None:
    """GPT-2's Conv1D stores weights transposed (peft's fan_in_fan_out)."""
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=300, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    torch.manual_seed(0)
    gpt2: Any = GPT2LMHeadModel  # untyped constructor
    base, fresh = gpt2(config).eval(), gpt2(config).eval()
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True)
    peft_model = get_peft_model(base, lora)
    _randomize_adapters(peft_model)
    student = Student(causal_lm=base, tokenizer=None, peft_model=peft_model, source=Path("gpt2"))
    _merged_matches(student, fresh, torch.tensor([[1, 5, 9, 30, 7, 8]]))
