"""General replay in training: the mix per phase, the KL anchor's base targets, the held-out drift
measure, selection within a forgetting budget, and the settings' rules."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from labalign.errors import LabalignError
from labalign.llm.chat_template import DEFAULT_CHAT_TEMPLATE
from labalign.settings.train import TrainSettings
from labalign.train.anchor import compute_base_targets
from labalign.train.data import read_samples
from labalign.train.general import replay_epochs, split_general, validation
from labalign.train.packing import build_pack
from labalign.train.phases import TrainConfig, train
from labalign.train.tokenize import TokenizedData, tokenize_samples
from labalign.train.trainlog import read_log
from tests.test_train_helpers import (
    WORDS,
    make_records,
    tiny_model,
    tiny_model_dir,
    tiny_tokenizer,
    write_jsonl,
)


def _replay_records(openings: int, per: int, *, seed: int = 3) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {
            "id": f"opening-{o:03d}-{i}",
            "messages": [{"role": "pretraining", "content": " ".join(rng.choice(WORDS) for _ in range(20))}],
            "metadata": {"source": "general_replay"},
            "unmask": False,
        }
        for o in range(openings)
        for i in range(per)
    ]


def _tokenized(tmp_path: Path, records: list[dict[str, Any]], tokenizer: Any = None) -> TokenizedData:
    path = write_jsonl(tmp_path / "r.jsonl", records)
    tokenizer = tokenizer or tiny_tokenizer(DEFAULT_CHAT_TEMPLATE)
    return tokenize_samples(read_samples(path), tokenizer, max_seq_len=256, long_samples="drop")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    return {
        "phase1": write_jsonl(root / "p1.jsonl", make_records(24, seed=1)),
        "phase2": write_jsonl(root / "p2.jsonl", make_records(16, seed=2)),
        "replay": write_jsonl(root / "replay.jsonl", _replay_records(10, 2)),
    }


def _settings(**overrides: Any) -> TrainSettings:
    base: dict[str, Any] = dict(
        batch_size=8,
        epochs=2,
        max_seq_len=256,
        max_batch_tokens=256,
        warmup_steps=1,
        learning_rate=3e-3,
        bf16="off",
        holdout_fraction=0.0,
        replay_ratio=0.5,
        kl_weight=1.0,
    )
    base.update(overrides)
    return TrainSettings(**base)


def _train(model_dir: Path, files: dict[str, Path], out: Path, settings: TrainSettings) -> Any:
    return train(
        TrainConfig(
            model=str(model_dir),
            out=out,
            phase1=files["phase1"],
            phase2=files["phase2"],
            replay=files["replay"],
            settings=settings,
            cache_dir=out.parent / "cache",
            show_progress=False,
        )
    )


def test_split_keeps_an_opening_on_one_side_and_is_seeded(tmp_path: Path) -> None:
    data = _tokenized(tmp_path, _replay_records(20, 3))
    train_idx, val_idx = split_general(data, 0.2, seed=5)
    assert len(val_idx) == 4 * 3 and len(train_idx) == 16 * 3
    group = {data.ids[i].rsplit("-", 1)[0] for i in val_idx}
    assert not group & {data.ids[i].rsplit("-", 1)[0] for i in train_idx}
    assert split_general(data, 0.2, seed=5) == (train_idx, val_idx)
    assert split_general(data, 0.2, seed=6) != (train_idx, val_idx)
    assert split_general(data, 0.0, seed=5) == (list(range(60)), [])


def test_replay_draws_rotate_through_the_pool_across_epochs() -> None:
    lengths = np.array([10] * 6)
    draws = replay_epochs([0, 1, 2, 3, 4, 5], lengths, 35, 3, seed=1, phase=1)
    assert [len(d) for d in draws] == [4, 4, 4]  # 35 tokens at 10 a text
    assert sorted(draws[0] + draws[1][:2]) == [0, 1, 2, 3, 4, 5]  # every text before any repeat
    assert replay_epochs([0, 1, 2, 3, 4, 5], lengths, 35, 3, seed=1, phase=2) != draws
    assert replay_epochs([0, 1, 2, 3, 4, 5], lengths, 35, 3, seed=1, phase=1) == draws
    assert replay_epochs([0, 1], lengths, 0, 2, seed=1, phase=1) == [[], []]


def test_base_targets_are_the_models_own_distribution(tmp_path: Path) -> None:
    data = _tokenized(tmp_path, _replay_records(3, 2))
    model = tiny_model().eval()
    targets = compute_base_targets(model, data, k=5, max_batch_tokens=256, bf16=False)
    with torch.no_grad():
        for i in range(len(data)):
            ids, _ = data.sample(i)
            lo = int(data.offsets[i])
            logits = model(input_ids=torch.tensor(ids)[None]).logits[0].double()
            lsm = torch.log_softmax(logits, -1)
            top = lsm.topk(5, -1)
            np.testing.assert_allclose(targets.logp[lo : lo + len(ids)], top.values.numpy(), atol=1e-4)
            assert (targets.ids[lo : lo + len(ids)] == top.indices.numpy()).mean() > 0.99
            nll = -lsm[:-1].gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1).numpy()
            np.testing.assert_allclose(targets.nll[lo : lo + len(ids) - 1], nll, atol=1e-4)
            assert targets.nll[lo + len(ids) - 1] == 0.0
    anchors = targets.anchors(data)
    ends = data.offsets[1:] - 1
    assert not anchors.active[ends].any() and anchors.active.sum() == len(data.input_ids) - len(data)


def test_pack_carries_the_anchors_of_its_samples(tmp_path: Path) -> None:
    data = _tokenized(tmp_path, _replay_records(2, 2))
    targets = compute_base_targets(tiny_model().eval(), data, k=3, max_batch_tokens=256, bf16=False)
    chat = _tokenized(tmp_path / "c", make_records(2, seed=9))
    data.anchors = targets.anchors(data)
    mixed = TokenizedData.concat([chat, data])
    batch = build_pack(mixed, [3, 0, 2], pad_to=64)
    assert batch.kl_index is not None and batch.kl_ids is not None and batch.kl_logp is not None
    lengths = mixed.lengths()
    first = int(lengths[3]) - 1 + int(lengths[0]) - 0  # sample 3 (replay), then 0 (chat), then 2 (replay)
    expected = list(range(int(lengths[3]) - 1)) + list(
        range(int(lengths[3]) + int(lengths[0]), int(lengths[3]) + int(lengths[0]) + int(lengths[2]) - 1)
    )
    assert batch.kl_index.tolist() == expected and first > 0
    lo = int(data.offsets[1])  # sample 3 of the mix is replay sample 1
    assert torch.equal(batch.kl_ids[0], torch.from_numpy(targets.ids[lo].astype(np.int64)))
    assert mixed.loss_counts()[3] == mixed.target_counts()[3] + int(lengths[3]) - 1
    assert mixed.anchor_counts()[0] == 0


def test_validation_slice_ratio_is_one_for_the_base(tmp_path: Path) -> None:
    from labalign.train.model import CausalLMLoss, load_student

    model_dir = tiny_model_dir(tmp_path / "m")
    s = _settings()
    student = load_student(model_dir, s, device=torch.device("cpu"), bf16=False, seed=0)
    data = _tokenized(tmp_path, _replay_records(4, 2), student.tokenizer)
    targets = compute_base_targets(student.causal_lm.eval(), data, k=4, max_batch_tokens=256, bf16=False)
    general = validation(data, [0, 1, 5], targets.nll)
    assert general is not None and general.data.anchors is None
    loss = CausalLMLoss(student, None)
    total = torch.zeros(2, dtype=torch.float64)
    with torch.no_grad():
        for i in range(len(general.data)):
            b = build_pack(general.data, [i])
            s_, c = loss(b.input_ids, b.position_ids, b.targets)
            total += torch.tensor([float(s_), float(c)], dtype=torch.float64)
    assert int(total[1]) == general.tokens
    assert general.ratio(float(total[0] / total[1])) == pytest.approx(1.0, abs=1e-4)


def test_training_with_replay_and_kl_anchor(model_dir: Path, files: dict[str, Path], tmp_path: Path) -> None:
    result = _train(model_dir, files, tmp_path / "run", _settings(general_validation=0.2))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    for phase in summary["phases"]:
        assert phase["data"]["replay_samples"] > 0 and phase["data"]["replay_tokens"] > 0
        # Each epoch draws other replay texts (the pool has 16 training texts, so some repeat).
        assert phase["data"]["replay_texts"] > phase["data"]["replay_samples"]
        assert phase["general_ratio"] is not None and phase["general_ratio"] > 0
        assert [c["step"] for c in phase["candidates"]] == [phase["steps"] // 2, phase["steps"]]
        assert all(c["general_ratio"] is not None for c in phase["candidates"])
    evals = [r for r in read_log(tmp_path / "run" / "training_log.jsonl") if r["event"] == "eval"]
    assert all(r["general_ratio"] is not None for r in evals)
    assert result.final.is_dir()
    # The base's targets were cached: a second run reads them back instead of recomputing.
    assert list((tmp_path / "cache" / "train-anchors").glob("*.npz"))


def test_kl_anchor_keeps_the_model_closer_to_the_base(
    model_dir: Path, files: dict[str, Path], tmp_path: Path
) -> None:
    def drift(name: str, **overrides: Any) -> float:
        s = _settings(learning_rate=1e-2, epochs=3, general_validation=0.3, **overrides)
        return float(_train(model_dir, files, tmp_path / name, s).phases[-1].general_ratio)

    anchored = drift("anchored", replay_ce=False, kl_weight=4.0)
    almost_none = drift("none", replay_ratio=0.01, kl_weight=0.0)
    # Closer to the base either way (on these random words, learning their frequencies can also lower it).
    assert abs(math.log(anchored)) < abs(math.log(almost_none))


def test_forgetting_budget_picks_a_checkpoint_within_it(
    model_dir: Path, files: dict[str, Path], tmp_path: Path
) -> None:
    s = _settings(learning_rate=2e-2, epochs=3, general_validation=0.3, kl_weight=0.0, replay_ratio=0.1)
    free = _train(model_dir, files, tmp_path / "free", s)
    ratios = [c["general_ratio"] for c in free.phases[0].candidates]
    budget = (min(ratios) + max(ratios)) / 2
    assert min(ratios) < budget < max(ratios)
    held = _train(model_dir, files, tmp_path / "held", s.model_copy(update={"forgetting_budget": budget}))
    chosen = held.phases[0]
    within = [c for c in chosen.candidates if c["general_ratio"] <= budget]
    assert chosen.general_ratio is not None and chosen.general_ratio <= budget
    assert chosen.best_step == within[-1]["step"]  # no held-out split: the latest within the budget


def test_replay_settings_rules(model_dir: Path, files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="replay_ratio above 0"):
        TrainSettings(kl_weight=1.0)
    with pytest.raises(ValidationError, match="trains nothing"):
        TrainSettings(replay_ratio=0.5, replay_ce=False)
    config = TrainConfig(
        model=str(model_dir),
        out=tmp_path / "x",
        phase1=files["phase1"],
        settings=_settings(),
        cache_dir=tmp_path / "cache",
        show_progress=False,
    )
    with pytest.raises(LabalignError, match="no replay data"):
        train(config)


def test_replay_data_setting_is_read_and_recorded(
    model_dir: Path, files: dict[str, Path], tmp_path: Path
) -> None:
    s = _settings(replay_data=str(files["replay"]), epochs=1)
    config = TrainConfig(
        model=str(model_dir),
        out=tmp_path / "run",
        phase1=files["phase1"],
        settings=s,
        cache_dir=tmp_path / "cache",
        show_progress=False,
    )
    result = train(config)
    assert result.phases[0].data["replay_samples"] > 0
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["inputs"]["replay"]["path"] == str(files["replay"])
    missing = TrainConfig(
        model=str(model_dir),
        out=tmp_path / "run2",
        phase1=files["phase1"],
        settings=_settings(replay_data=str(tmp_path / "nope.jsonl")),
        cache_dir=tmp_path / "cache",
        show_progress=False,
    )
    with pytest.raises(LabalignError, match="data file not found") as err:
        train(missing)
    assert "--replay-data" in str(err.value.hint)


def test_interpolation_auto_in_training_writes_final_and_records_the_search(
    model_dir: Path, files: dict[str, Path], tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    s = _settings(general_validation=0.3, interpolation="auto", forgetting_budget=1.0)
    result = _train(model_dir, files, tmp_path / "run", s)
    tried = result.interpolation_candidates
    assert tried and tried[0]["interpolation"] == 1.0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["interpolation"] == result.interpolation and summary["interpolation_candidates"] == tried
    # On these random words the tuned model predicts the held-out text better than the base (ratio
    # below 1), so w = 1 is within any budget and final/ is phase 2's best as it is.
    assert tried[0]["general_ratio"] < 1.0 and result.interpolation == 1.0 and len(tried) == 1
    got = AutoModelForCausalLM.from_pretrained(result.final).state_dict()
    want = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "phase2" / "best").state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_choose_interpolation_walks_down_to_the_first_weight_within_the_budget(
    model_dir: Path, tmp_path: Path
) -> None:
    import numpy as np
    from transformers import AutoModelForCausalLM

    from labalign.train.auto_interpolation import choose_interpolation, mean_nll
    from labalign.train.general import GeneralValidation
    from labalign.train.interpolate import interpolate_checkpoint
    from labalign.train.tokenize import TokenizedData

    # A "tuned" model that is the base plus noise: it predicts held-out text worse, less so nearer the base.
    tuned_dir = tmp_path / "tuned"
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("proj.weight"):
                param.add_(0.3 * torch.randn(param.shape, generator=gen))
    model.save_pretrained(tuned_dir)
    # Held-out "general text": the base's own samples, which any other model predicts worse on average.
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    torch.manual_seed(0)
    with torch.no_grad():
        sampled = base.generate(
            torch.tensor([[1], [2], [3]]), do_sample=True, max_new_tokens=19, min_new_tokens=19
        )
    ids = sampled.reshape(-1).numpy().astype(np.int64)
    data = TokenizedData(
        ids, np.ones(60, dtype=bool), np.array([0, 20, 40, 60]), ["a", "b", "c"], ["a", "b", "c"]
    )
    base_mean = mean_nll(
        AutoModelForCausalLM.from_pretrained(model_dir), GeneralValidation(data, 0.0, 1), bf16=False
    )
    general = GeneralValidation(data, base_mean * 57, 57)  # 3 samples x 19 scored tokens
    full = general.ratio(mean_nll(model, general, bf16=False))
    assert full > 1.0
    budget = 1 + (full - 1) * 0.3  # reached somewhere on the way down
    choice = choose_interpolation(
        model_dir, tuned_dir, tmp_path / "final", general, budget, bf16=False, device=torch.device("cpu")
    )
    tried = {c["interpolation"]: c["general_ratio"] for c in choice.candidates}
    assert choice.candidates[0]["general_ratio"] == pytest.approx(full, rel=1e-6) and len(tried) > 1
    # The largest weight within the budget: the grid weight just above it was tried and is over.
    assert choice.general_ratio == tried[choice.weight] <= budget
    assert tried[round(choice.weight + 0.05, 4)] > budget
    assert all(r > budget for w, r in tried.items() if w > choice.weight)
    expected = tmp_path / "expected"
    interpolate_checkpoint(model_dir, tuned_dir, expected, choice.weight)
    got = AutoModelForCausalLM.from_pretrained(tmp_path / "final").state_dict()
    want = AutoModelForCausalLM.from_pretrained(expected).state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert not (tmp_path / "final.trial").exists()


@pytest.mark.parametrize("power", [0.7, 1.0, 1.6, 3.0])
@pytest.mark.parametrize("budget", [1.02, 1.08, 1.1, 1.2, 1.3])
def test_search_weights_finds_what_walking_down_the_grid_finds_in_fewer_tries(
    power: float, budget: float
) -> None:
    from labalign.train.auto_interpolation import search_weights

    def ratio_at(w: float) -> float:  # falls with w to 1 at the base; 1.27 at w = 1 like the example's run
        return 1 + 0.27 * float(w**power)

    grid = [round(1 - 0.05 * k, 4) for k in range(15)]
    walked = next((w for w in grid if ratio_at(w) <= budget), grid[-1])
    chosen, tried = search_weights(ratio_at, budget)
    assert chosen == walked
    assert tried[0][0] == 1.0 and len({w for w, _ in tried}) == len(tried)
    assert len(tried) <= max(5, grid.index(walked) + 1)


def test_search_weights_edges() -> None:
    from labalign.train.auto_interpolation import search_weights

    assert search_weights(lambda w: 0.9, 1.1) == (1.0, [(1.0, 0.9)])  # the tuned model as it is
    chosen, tried = search_weights(lambda w: 2.0 + w, 1.1)  # never within: the least drift seen
    assert chosen == 0.3 and tried[-1] == (0.3, 2.3)
    chosen, tried = search_weights(lambda w: float("nan") if w < 1 else 1.5, 1.1)
    assert chosen == 1.0 and len(tried) == 2


def test_mean_nll_is_the_models_own_cross_entropy(model_dir: Path) -> None:
    import numpy as np
    from transformers import AutoModelForCausalLM

    from labalign.train.auto_interpolation import mean_nll
    from labalign.train.general import GeneralValidation
    from labalign.train.tokenize import TokenizedData

    ids = np.array([1, 5, 9, 30, 7, 8, 2, 4, 6, 11, 12], dtype=np.int64)
    supervised = np.ones(len(ids), dtype=bool)
    data = TokenizedData(ids, supervised, np.array([0, 6, 11]), ["a-0", "b-0"], ["a", "b"])
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    got = mean_nll(model, GeneralValidation(data, 0.0, 1), bf16=False)
    with torch.no_grad():
        first = model(torch.from_numpy(ids[None, :6]), labels=torch.from_numpy(ids[None, :6])).loss
        second = model(torch.from_numpy(ids[None, 6:]), labels=torch.from_numpy(ids[None, 6:])).loss
    assert got == pytest.approx(float((first * 5 + second * 4) / 9), rel=1e-5)


def test_interpolation_setting_rules() -> None:
    assert TrainSettings(interpolation="auto", replay_ratio=0.5, kl_weight=1.0).interpolation == "auto"
    assert TrainSettings(interpolation=0.6).interpolation == 0.6
    with pytest.raises(ValidationError, match="replay_ratio and general_validation"):
        TrainSettings(interpolation="auto")
    with pytest.raises(ValidationError, match=r"\(0, 1\]"):
        TrainSettings(interpolation=1.5)
