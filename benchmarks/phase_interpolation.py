"""Where a run's knowledge, skills and drift live: phase 1's and phase 2's weight changes merged back
toward the base by separate weights, against the uniform WiSE-FT merge the run uses.

    python benchmarks/phase_interpolation.py --run runs/quick [--mix 0.5,0.5 --mix 0.3,0.7 ...]
        [--branch 0.3,0.7 ...]

final = base + w1 x (phase1 - base) + w2 x (phase2 - phase1), from the finished run's
`train/phase1/best` and `train/phase2/best`; w1 = w2 = W is the run's own merge at W. For each
(w1, w2) it prints the held-out general ratio that `train.interpolation auto` chooses W by (the same
slice of the replay text, the same base losses). With `--branch` it also answers the example's held-out
questions with that merge (`labalign evaluate branch`, the run's evaluation settings; the base's answers
come from the machine's evaluation cache) and prints each leaf's token-F1 gain over the base.
No retraining: every row is the same trained weights.

`--trim P,S` (repeatable) is the other way to shrink the change, TIES-merging's trim step: final = base +
S x (the largest fraction P of phase 2's weight changes by magnitude, per tensor; the rest zero), held-out
ratio and branch gains as above.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from labalign.evaluate.results import BranchResult, load_result
from labalign.modeling.models import load_tokenizer
from labalign.paths import default_cache_dir
from labalign.settings.train import TrainSettings
from labalign.train.auto_interpolation import mean_nll
from labalign.train.general import GeneralValidation, split_general, validation
from labalign.train.model import bf16_enabled
from labalign.train.phases import replay_base_targets
from labalign.train.tokenize import load_tokenized

ROOT = Path(__file__).resolve().parents[1]


def _pair(text: str) -> tuple[float, float]:
    w1, _, w2 = text.partition(",")
    return float(w1), float(w2)


def _held_out_slice(run: Path, base: Path, s: TrainSettings) -> GeneralValidation:
    """The run's held-out replay slice and the base's losses on it (read from the machine's cache)."""
    replay = load_tokenized(
        run / "data" / "general_replay.jsonl",
        load_tokenizer(base),
        max_seq_len=s.max_seq_len,
        long_samples=s.long_samples,
        cache_dir=default_cache_dir(),
    )
    _, val = split_general(replay, s.general_validation, s.seed)
    targets = replay_base_targets(s, base, replay, torch.device("cpu"), default_cache_dir())
    general = validation(replay, val, targets.nll)
    if general is None:
        raise SystemExit(f"{run}: the run held out no replay text (train.general_validation 0)")
    return general


def _each_changed(
    base: dict[str, torch.Tensor],
    tuned: dict[str, torch.Tensor],
    combine: Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor],
) -> dict[str, torch.Tensor]:
    """`combine(name, base fp32, tuned fp32)` for every tensor training changed, in the tuned dtype;
    frozen tensors as they are."""
    out: dict[str, torch.Tensor] = {}
    for name, t in tuned.items():
        b = base[name]
        same = torch.equal(b.to(t.dtype), t)
        out[name] = t if same else combine(name, b.float(), t.float()).to(t.dtype).contiguous()
    return out


def merge(
    base: dict[str, torch.Tensor],
    p1: dict[str, torch.Tensor],
    p2: dict[str, torch.Tensor],
    w1: float,
    w2: float,
) -> dict[str, torch.Tensor]:
    """base + w1 (p1 - base) + w2 (p2 - p1) in fp32, in the tuned dtype (frozen tensors as they are)."""

    def combine(name: str, b: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
        t1 = p1[name].float()
        return b + w1 * (t1 - b) + w2 * (t2 - t1)

    return _each_changed(base, p2, combine)


def trim(
    base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], keep: float, scale: float
) -> dict[str, torch.Tensor]:
    """base + scale x (tuned - base) with all but the largest `keep` fraction of each tensor's changes
    (by magnitude) set to zero, in fp32, in the tuned dtype."""

    def combine(_: str, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        delta = t - b
        k = max(1, int(delta.numel() * keep))
        threshold = delta.abs().flatten().kthvalue(delta.numel() - k + 1).values
        return b + scale * torch.where(delta.abs() >= threshold, delta, torch.zeros_like(delta))

    return _each_changed(base, tuned, combine)


def answer_heldout(
    model: Path, run: Path, out: Path, taxonomy: Path = ROOT / "examples" / "taxonomy"
) -> None:
    """`labalign evaluate branch` of `model` against the run's base, with the run's evaluation settings
    (its generated held-out questions, no seeds, 96 tokens): OUT/branch.json and branch_answers.jsonl."""
    base = json.loads((run / "train" / "run.json").read_text())["model"]
    cmd = [sys.executable, "-m", "labalign", "evaluate", "branch", str(taxonomy), "--model", str(model)]
    cmd += ["--base", base, "--data", str(run / "data"), "--no-seeds", "--max-tokens", "96"]
    subprocess.run([*cmd, "--out", str(out)], check=True, stdout=subprocess.DEVNULL)


def _branch(model: Path, run: Path, out: Path) -> dict[str, float]:
    answer_heldout(model, run, out)
    result = load_result(out, "branch")
    assert isinstance(result, BranchResult)
    return {row.leaf.rsplit("/", 1)[-1]: row.delta.f1.mean for row in result.leaves if row.delta is not None}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, required=True, help="a finished `labalign run` directory")
    parser.add_argument("--mix", type=_pair, action="append", default=[], help="w1,w2 (repeatable)")
    parser.add_argument("--branch", type=_pair, action="append", default=[], help="w1,w2 also evaluated")
    parser.add_argument("--trim", type=_pair, action="append", default=[], help="P,S (repeatable)")
    parser.add_argument("--trim-branch", action="store_true", help="also evaluate each --trim")
    parser.add_argument("--work", type=Path, default=Path("runs/phase_interpolation"))
    args = parser.parse_args()
    run: Path = args.run
    record: dict[str, Any] = json.loads((run / "train" / "run.json").read_text())
    base = Path(record["model"])
    s = TrainSettings(**record["settings"])
    bf16 = bf16_enabled(s.bf16, torch.device("cpu"))
    general = _held_out_slice(run, base, s)
    base_w, p1_w, p2_w = (
        load_file(str(d / "model.safetensors"))
        for d in (base, run / "train" / "phase1" / "best", run / "train" / "phase2" / "best")
    )
    from transformers import AutoModelForCausalLM

    mixes: list[tuple[str, float, float]] = [
        ("mix", w1, w2) for w1, w2 in dict.fromkeys([*args.mix, *args.branch])
    ] + [("trim", p, scale) for p, scale in args.trim]
    mixes = mixes or [("mix", 1.0, 1.0)]
    print(
        f"{'w1':>5} {'w2':>5} {'held-out ratio':>15}  branch token-F1 gains (W = w1 = w2 is the run's merge)"
    )
    for kind, w1, w2 in mixes:
        start = time.perf_counter()
        model_dir = args.work / (f"w{w1:g}_{w2:g}" if kind == "mix" else f"trim{w1:g}_{w2:g}")
        shutil.copytree(
            run / "train" / "phase2" / "best",
            model_dir,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns("*.safetensors"),
        )
        weights = merge(base_w, p1_w, p2_w, w1, w2) if kind == "mix" else trim(base_w, p2_w, w1, w2)
        save_file(weights, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
        model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        model.eval()
        ratio = general.ratio(mean_nll(model, general, bf16=bf16))
        del model
        gains = ""
        if (kind == "mix" and (w1, w2) in args.branch) or (kind == "trim" and args.trim_branch):
            scores = _branch(model_dir, run, model_dir / "eval")
            gains = ", ".join(f"{leaf} {gain:+.3f}" for leaf, gain in scores.items())
        label = f"{w1:5g} {w2:5g}" if kind == "mix" else f"trim {w1:g} x {w2:g}".rjust(11)
        print(f"{label} {ratio:15.4f}  {gains}  ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
