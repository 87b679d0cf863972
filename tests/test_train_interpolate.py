"""Weight interpolation of final/ toward the base (WiSE-FT): exact weights, shards, refusals, a base
read through transformers, the setting's range (the trainer writing final/ so: test_train_run.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from labalign.errors import LabalignError
from labalign.settings.train import TrainSettings
from labalign.train.interpolate import interpolate_checkpoint
from tests.test_train_helpers import tiny_model, tiny_model_dir


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("base") / "tiny")


def _tuned_copy(base_dir: Path, dest: Path, *, shard: str | None = None) -> dict[str, torch.Tensor]:
    """`base_dir`'s model with every attention projection moved by a random step; the embeddings kept."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("proj.weight"):
                param.add_(torch.randn(param.shape, generator=gen))
    if shard:
        model.save_pretrained(dest, max_shard_size=shard)
    else:
        model.save_pretrained(dest)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _all_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(path))
    return out


@pytest.mark.parametrize("shard", [None, "40KB"])
def test_weights_are_the_weighted_mix_of_base_and_tuned(
    base_dir: Path, tmp_path: Path, shard: str | None
) -> None:
    from transformers import AutoModelForCausalLM

    tuned_dir = tmp_path / "tuned"
    _tuned_copy(base_dir, tuned_dir, shard=shard)
    if shard:
        assert (tuned_dir / "model.safetensors.index.json").is_file()
    base, tuned = _all_weights(base_dir), _all_weights(tuned_dir)
    moved = {k for k in tuned if not torch.equal(base[k], tuned[k])}
    assert moved and all(k.endswith("proj.weight") for k in moved)

    dest = tmp_path / "final"
    assert interpolate_checkpoint(base_dir, tuned_dir, dest, 0.25) == len(moved)
    mixed = _all_weights(dest)
    assert mixed.keys() == tuned.keys()
    for name, t in tuned.items():
        expected = base[name] + 0.25 * (t - base[name])
        torch.testing.assert_close(mixed[name], expected, rtol=1e-6, atol=1e-6)
        if name not in moved:
            assert torch.equal(mixed[name], t)
    # Loadable as it is, config and shard index carried over.
    assert sorted(p.name for p in dest.iterdir()) == sorted(p.name for p in tuned_dir.iterdir())
    AutoModelForCausalLM.from_pretrained(dest)

    interpolate_checkpoint(base_dir, tuned_dir, dest, 1.0)  # replaces the older final/
    for name, t in tuned.items():
        assert torch.equal(_all_weights(dest)[name], t)
    assert not dest.with_name("final.tmp").exists()


def test_refuses_a_base_that_is_not_where_training_started(tmp_path: Path) -> None:
    base_dir = tiny_model_dir(tmp_path / "base")
    tuned_dir = tmp_path / "tuned"
    tuned_dir.mkdir()
    weights = dict(load_file(base_dir / "model.safetensors"))
    weights["extra.weight"] = torch.zeros(2, 2)
    save_file(weights, str(tuned_dir / "model.safetensors"))
    with pytest.raises(LabalignError, match=r"has no weight 'extra\.weight'"):
        interpolate_checkpoint(base_dir, tuned_dir, tmp_path / "out", 0.5)

    wider = tiny_model(tie=False, hidden_size=64).state_dict()
    wider = {k: v.contiguous() for k, v in wider.items() if k in weights}
    save_file(wider, str(tuned_dir / "model.safetensors"))
    with pytest.raises(
        LabalignError,
        match=r"'model\.embed_tokens\.weight' is \(\d+, 32\) in the base model and \(\d+, 64\) tuned",
    ):
        interpolate_checkpoint(base_dir, tuned_dir, tmp_path / "out", 0.5)
    assert not (tmp_path / "out").exists()  # nothing half-written in place
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        interpolate_checkpoint(base_dir, tuned_dir, tmp_path / "out", 0.0)
    with pytest.raises(LabalignError, match="no safetensors"):
        interpolate_checkpoint(base_dir, tmp_path, tmp_path / "out", 0.5)


def test_a_base_without_safetensors_is_read_through_transformers(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    base_dir = tiny_model_dir(tmp_path / "base")
    tuned = _tuned_copy(base_dir, tmp_path / "tuned")
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    (base_dir / "model.safetensors").unlink()
    torch.save(base, base_dir / "pytorch_model.bin")  # the older format, which transformers still reads
    assert not list(base_dir.glob("*.safetensors"))
    interpolate_checkpoint(base_dir, tmp_path / "tuned", tmp_path / "out", 0.5)
    mixed = _all_weights(tmp_path / "out")
    for name, t in mixed.items():
        torch.testing.assert_close(t, base[name] + 0.5 * (tuned[name] - base[name]))


def test_settings_range_and_adapter_outputs() -> None:
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValidationError):
            TrainSettings(interpolation=bad)
    with pytest.raises(ValidationError, match="merged weights"):
        TrainSettings(lora=True, merge_lora=False, interpolation=0.5)
    assert TrainSettings(lora=True, merge_lora=False).interpolation == 1.0
