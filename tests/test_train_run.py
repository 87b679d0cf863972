"""End-to-end training in-process: layout, loadable checkpoints, selection, phase 2 from phase 1's
best, LoRA merging, stacked strategy, evaluator hook, output-directory safety."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from labalign.errors import LabalignError
from labalign.llm.chat_template import DEFAULT_CHAT_TEMPLATE
from labalign.settings.train import TrainSettings
from labalign.train.loop import PhaseSpec
from labalign.train.model import CausalLMLoss, Student, load_student, merged_state_dict
from labalign.train.packing import build_pack, epoch_order, steps_of
from labalign.train.phases import TrainConfig, train
from labalign.train.trainlog import read_log
from tests.test_train_helpers import backward, make_records, tiny_model_dir, write_jsonl


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("data")
    phase1 = make_records(40, seed=1)
    # Phase 2 replays some phase-1 samples, as LAB's mixing does.
    return write_jsonl(root / "p1.jsonl", phase1), write_jsonl(
        root / "p2.jsonl", make_records(30, seed=2) + phase1[:10]
    )


def _settings(**overrides: Any) -> TrainSettings:
    base: dict[str, Any] = dict(
        batch_size=8,
        epochs=2,
        max_seq_len=256,
        max_batch_tokens=256,
        save_every=2,
        keep_last=2,
        warmup_steps=2,
        learning_rate=3e-3,
        bf16="off",
        holdout_fraction=0.1,
    )
    base.update(overrides)
    return TrainSettings(**base)


def _run(model_dir: Path, data: tuple[Path, Path], out: Path, **kwargs: Any) -> Any:
    settings = kwargs.pop("settings", _settings())
    on_phase_start = kwargs.pop("on_phase_start", None)
    config = TrainConfig(
        model=str(model_dir),
        out=out,
        phase1=data[0],
        phase2=data[1],
        settings=settings,
        cache_dir=out.parent / "cache",
        show_progress=False,
        **kwargs,
    )
    return train(config, on_phase_start=on_phase_start)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


def test_phased_full_fine_tuning(model_dir: Path, data: tuple[Path, Path], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    specs: dict[str, PhaseSpec] = {}
    out = tmp_path / "run"
    result = _run(model_dir, data, out, on_phase_start=lambda s: specs.__setitem__(s.name, s))

    for phase in ("phase1", "phase2"):
        steps = sorted(int(p.name[5:]) for p in (out / phase / "checkpoints").iterdir())
        best = json.loads((out / phase / "best.json").read_text())["step"]
        per_epoch = -(-len(specs[phase].train) // 8)
        saved = [s for s in range(1, 2 * per_epoch + 1) if s % 2 == 0 or s % per_epoch == 0]
        assert steps == sorted(set(saved[-2:]) | {best})  # the last K and the best are kept
        assert sorted(int(p.name[5:]) for p in (out / phase / "state").iterdir()) == steps
        assert (out / phase / "loss.png").stat().st_size > 1000
        evals = [
            r for r in read_log(out / "training_log.jsonl") if r["event"] == "eval" and r["phase"] == phase
        ]
        assert best == min(evals, key=lambda r: r["heldout_loss"])["step"]  # selection by held-out loss
        assert (
            _weights(out / phase / "best").keys()
            == _weights(out / phase / "checkpoints" / f"step-{best}").keys()
        )

    log = read_log(out / "training_log.jsonl")
    train_steps = [(r["phase"], r["step"]) for r in log if r["event"] == "train"]
    assert train_steps == [("phase1", i) for i in range(1, result.phases[0].steps + 1)] + [
        ("phase2", i) for i in range(1, result.phases[1].steps + 1)
    ]
    first, last = [r["loss"] for r in log if r["phase"] == "phase1" and r["event"] == "train"][::9][:2]
    assert last < first  # it learns

    # The final model is phase 2's best, loadable as it is, with the default chat template.
    model = AutoModelForCausalLM.from_pretrained(out / "final")
    tokenizer = AutoTokenizer.from_pretrained(out / "final")
    assert tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE
    for name, value in _weights(out / "phase2" / "best").items():
        assert torch.equal(value, _weights(out / "final")[name])
    assert model.config.vocab_size == len(tokenizer)
    assert (out / "loss.png").stat().st_size > 1000
    summary = json.loads((out / "summary.json").read_text())
    assert [p["phase"] for p in summary["phases"]] == ["phase1", "phase2"]
    assert summary["phases"][0]["heldout_samples"] == 4

    # Phase 2 starts from phase 1's best: its first logged loss is that model's loss on its first step.
    spec2 = specs["phase2"]
    assert spec2.start_model == out / "phase1" / "best"
    student = load_student(spec2.start_model, _settings(), device=torch.device("cpu"), bf16=False, seed=0)
    first_step = steps_of(epoch_order(len(spec2.train), seed=42, phase=2, epoch=0), 8)[0]
    pack = build_pack(spec2.train, first_step)
    with torch.no_grad():
        loss_sum, count = CausalLMLoss(student, None)(pack.input_ids, pack.position_ids, pack.targets)
    logged = next(r["loss"] for r in log if r["phase"] == "phase2" and r["step"] == 1)
    assert float(loss_sum / count) == pytest.approx(logged, rel=1e-5)
    # Phase-1 held-out samples replayed in phase 2 stay held out.
    held1 = set(specs["phase1"].heldout.keys) if specs["phase1"].heldout else set()
    assert held1 and not held1 & set(spec2.train.keys)


def test_lora_merged_and_adapter_outputs(model_dir: Path, data: tuple[Path, Path], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    settings = _settings(lora=True, epochs=1, save_every=None, lora_rank=4, batch_size=16)
    out = tmp_path / "merged"
    _run(model_dir, data, out, settings=settings)
    base = _weights(model_dir)
    final = _weights(out / "final")
    assert final.keys() == base.keys()  # plain weights, no adapter keys
    changed = [k for k in base if not torch.equal(base[k], final[k])]
    assert changed and all(re.search(r"(proj)\.weight$", k) for k in changed)  # only adapted layers moved

    adapter_out = tmp_path / "adapter"
    _run(model_dir, data, adapter_out, settings=settings.model_copy(update={"merge_lora": False}))
    assert (adapter_out / "final" / "adapter_config.json").is_file()
    ids = torch.tensor([[1, 5, 9, 30, 7]])
    with torch.no_grad():
        from_adapter = AutoModelForCausalLM.from_pretrained(adapter_out / "final")(ids).logits
        from_merged = AutoModelForCausalLM.from_pretrained(adapter_out / "phase2" / "best")(ids).logits
    torch.testing.assert_close(from_adapter, from_merged, rtol=1e-4, atol=1e-4)


def test_interpolated_final_lies_between_base_and_last_best(
    model_dir: Path, data: tuple[Path, Path], tmp_path: Path
) -> None:
    settings = _settings(lora=True, epochs=1, save_every=None, lora_rank=4, batch_size=16, interpolation=0.5)
    out = tmp_path / "run"
    result = _run(model_dir, data, out, settings=settings)
    base, best, final = _weights(model_dir), _weights(out / "phase2" / "best"), _weights(result.final)
    assert any(not torch.equal(base[k], best[k]) for k in base)  # training moved some weights
    for name in base:
        torch.testing.assert_close(final[name], base[name] + 0.5 * (best[name] - base[name]))
    assert json.loads((out / "summary.json").read_text())["interpolation"] == 0.5 == result.interpolation


def test_merged_state_dict_reproduces_the_peft_model(model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    student = load_student(model_dir, _settings(lora=True), device=torch.device("cpu"), bf16=False, seed=0)
    with torch.no_grad():
        for name, param in student.trainable().items():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # B starts at zero: make the adapters matter
    ids = torch.tensor([[1, 5, 9, 30, 7, 8]])
    with torch.no_grad():
        expected = student.causal_lm(input_ids=ids).logits
    dest = tmp_path / "merged"
    from labalign.train.checkpoint import save_hf_checkpoint

    save_hf_checkpoint(dest, student, merged_state_dict(student))
    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(dest)(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, AutoModelForCausalLM.from_pretrained(model_dir)(input_ids=ids).logits)


def test_lora_layers_adapts_only_the_top_layers_and_backward_stops_below_them(
    model_dir: Path, tmp_path: Path
) -> None:

    student = load_student(
        model_dir, _settings(lora=True, lora_layers=1), device=torch.device("cpu"), bf16=False, seed=0
    )
    adapted = {name.split(".layers.")[1].split(".")[0] for name in student.trainable()}
    assert adapted == {"1"}  # the tiny model has 2 decoder layers
    reached: list[int] = []
    for index, layer in enumerate(student.causal_lm.get_decoder().layers):
        layer.register_full_backward_hook(lambda *_, i=index: reached.append(i))
    ids = torch.tensor([[1, 5, 9, 30, 7, 8]])
    total, _ = CausalLMLoss(student, None)(ids, torch.arange(6)[None], torch.tensor([[5, 9, 30, 7, 8, -100]]))
    backward(total)
    assert reached == [1]
    with pytest.raises(LabalignError, match="lora_layers is 3 but the model has 2 decoder layers"):
        load_student(
            model_dir, _settings(lora=True, lora_layers=3), device=torch.device("cpu"), bf16=False, seed=0
        )


def test_stacked_and_evaluator_selection(model_dir: Path, data: tuple[Path, Path], tmp_path: Path) -> None:
    scored: list[str] = []

    def evaluator(checkpoint: Path) -> float:
        scored.append(checkpoint.name)
        return 1.0 if checkpoint.name == "step-2" else 0.0  # the judge prefers an early checkpoint

    out = tmp_path / "stacked"
    settings = _settings(strategy="stacked", epochs=1, batch_size=16)
    result = _run(model_dir, data, out, settings=settings, evaluator=evaluator)
    assert [p.phase for p in result.phases] == ["stacked"] and not (out / "phase1").exists()
    assert result.phases[0].best_step == 2 and result.phases[0].score == 1.0
    assert json.loads((out / "stacked" / "best.json").read_text()) == {"step": 2}
    assert scored == ["step-2", "step-4", "step-5"]  # 72 training samples / 16: 5 steps, saved every 2
    assert (out / "final" / "config.json").is_file()


def test_output_directory_safety(model_dir: Path, data: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "something").write_text("x")
    with pytest.raises(LabalignError, match="not empty") as info:
        _run(model_dir, data, out)
    assert "--resume" in (info.value.hint or "")
    done = tmp_path / "done"
    quick = _settings(epochs=1, save_every=None, batch_size=16)
    _run(model_dir, data, done, settings=quick)
    with pytest.raises(LabalignError, match="different settings"):
        _run(model_dir, data, done, settings=quick.model_copy(update={"epochs": 2}), resume=True)
    # Resuming a finished run redoes nothing and returns the same result.
    again = _run(model_dir, data, done, settings=quick, resume=True)
    assert [p.best_step for p in again.phases] == [
        p["best_step"] for p in json.loads((done / "summary.json").read_text())["phases"]
    ]


def test_bad_model_directory(data: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(LabalignError, match=r"no config\.json"):
        train(TrainConfig(model=str(tmp_path), out=tmp_path / "o", phase1=data[0], show_progress=False))
    with pytest.raises(LabalignError, match="no training data"):
        train(TrainConfig(model=str(tmp_path), out=tmp_path / "o"))


def test_student_modes(model_dir: Path) -> None:
    cpu = torch.device("cpu")
    full = load_student(model_dir, _settings(), device=cpu, bf16=False, seed=0)
    assert "model.embed_tokens.weight" not in full.trainable()  # frozen embeddings (and tied head)
    assert len(full.trainable()) > 5
    unfrozen = load_student(model_dir, _settings(freeze_embeddings=False), device=cpu, bf16=False, seed=0)
    assert "model.embed_tokens.weight" in unfrozen.trainable()
    lora = load_student(model_dir, _settings(lora=True), device=cpu, bf16=True, seed=0)
    assert all("lora_" in n for n in lora.trainable())
    assert all(p.dtype == torch.float32 for p in lora.trainable().values())
    assert lora.causal_lm.get_input_embeddings().weight.dtype == torch.bfloat16  # frozen base in bf16
    checkpointed = load_student(
        model_dir, _settings(gradient_checkpointing=True), device=cpu, bf16=False, seed=0
    )
    assert checkpointed.causal_lm.is_activation_checkpointing
    assert isinstance(full, Student)
