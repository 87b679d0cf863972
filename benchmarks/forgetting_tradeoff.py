"""Learning against forgetting: the quick profile's data trained with each retention method, one table.

    python benchmarks/forgetting_tradeoff.py --data runs/quick [--out runs/tradeoff]
        [--methods none,replay,kl,both] [--set kl:train.kl_weight=2]

`--data` is a finished `labalign run` directory (its generated data is reused, so every method trains
on the same records). Each method is that run again with only the `train:` settings changed, through
`labalign run` itself (LABALIGN_TRAIN__* variables): the run sees the training settings changed and
redoes training, evaluation and the report. Methods:

- profile: the quick profile as it is;
- none:   no general replay (the rest of the profile as it is);
- replay: general replay (the base student's own text) at 0.5 tokens per data token, cross-entropy;
- kl:     the same replay text as a KL(base || tuned) anchor only (no cross-entropy on it);
- both:   replay cross-entropy and the KL anchor;
- any name given with --set NAME:KEY=VALUE (several allowed) on top of the profile.

`--interpolations 1,0.75` also scores each method's trained weights (phase 2's best) merged part of
the way back to the base, final = base + W x (tuned - base), evaluated exactly as the run evaluates
(rows "METHOD@W"): no retraining. `auto` finishes the training again with `train.interpolation auto`
(only final/ is redone) and scores the W it chooses (rows "METHOD@auto=W").

Prints, per method: held-out knowledge token-F1 gain [95% CI] (the example's 100 questions), both
skills' gains, the general-text perplexity ratio to the base (the forgetting check), the
general-knowledge accuracy change [95% CI], and training minutes (same machine, one method at a time;
compare minutes only within one invocation). Writes OUT/tradeoff.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from labalign.evaluate.results import BranchResult, ForgettingResult, GeneralKnowledgeResult, load_result
from labalign.manifest import load_manifest
from labalign.train.summary import TrainResult

ROOT = Path(__file__).resolve().parents[1]
METHODS: dict[str, dict[str, str]] = {
    "profile": {},
    "none": {"replay_ratio": "0", "kl_weight": "0"},
    "replay": {"replay_ratio": "0.5", "replay_ce": "true", "kl_weight": "0"},
    "kl": {"replay_ratio": "0.5", "replay_ce": "false", "kl_weight": "1"},
    "both": {"replay_ratio": "0.5", "replay_ce": "true", "kl_weight": "1"},
}


def named_settings(
    base: dict[str, dict[str, str]], sets: list[str], strip: str = ""
) -> dict[str, dict[str, str]]:
    """`base` with each --set NAME:KEY=VALUE added (a new NAME starts empty; `strip` leaves a key prefix
    off)."""
    out = {k: dict(v) for k, v in base.items()}
    for item in sets:
        name, _, assignment = item.partition(":")
        key, _, value = assignment.partition("=")
        out.setdefault(name, {})[key.removeprefix(strip)] = value
    return out


def run_labalign(
    name: str, run: Path, taxonomy: Path, settings: dict[str, str], sections: tuple[str, ...]
) -> int:
    """`labalign run` of `taxonomy` into `run` with `settings` ("section.key": value) as LABALIGN_*
    variables, every other variable of those sections cleared; its exit code."""
    prefixes = tuple(f"LABALIGN_{section.upper()}__" for section in sections)
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    for key, value in settings.items():
        section, _, field = key.partition(".")
        env[f"LABALIGN_{section.upper()}__{field.upper()}"] = value
    print(f"== {name}: {settings or 'the profile as it is'}", flush=True)
    code = subprocess.call(
        [sys.executable, "-m", "labalign", "run", str(taxonomy), "--out", str(run)], env=env
    )
    if code != 0:
        print(f"{name}: labalign run failed with exit code {code}", file=sys.stderr)
    return code


def _prepare(data_run: Path, out: Path) -> None:
    """A copy of the finished run without its training and evaluation (the data and manifest stay)."""
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(data_run, out, ignore=shutil.ignore_patterns("train", "eval", "report.html", "*.lock"))


def _gain(branch: BranchResult, leaf: str) -> dict[str, Any] | None:
    for row in branch.leaves:
        if row.leaf.endswith(leaf) and row.delta is not None:
            return row.delta.f1.model_dump()
    return None


def _scores(name: str, evals: Path) -> dict[str, Any]:
    branch, forgetting = load_result(evals, "branch"), load_result(evals, "forgetting")
    if not isinstance(branch, BranchResult) or not isinstance(forgetting, ForgettingResult):
        raise SystemExit(f"{evals}: no branch or forgetting result (skipped or not run)")
    gk = load_result(evals, "general_knowledge")
    kept = {"base", "tuned", "delta", "ci_low", "ci_high"}
    return {
        "method": name,
        "knowledge": _gain(branch, "quillmarrow_island"),
        "meeting_action_items": _gain(branch, "meeting_action_items"),
        "formal_business_rewrite": _gain(branch, "formal_business_rewrite"),
        "perplexity_ratio": forgetting.ratio,
        "general_knowledge": gk.model_dump(include=kept) if isinstance(gk, GeneralKnowledgeResult) else {},
    }


def _row(name: str, run: Path) -> dict[str, Any]:
    manifest = load_manifest(run)
    if manifest is None:
        raise SystemExit(f"{run}: not a labalign run (no manifest.json)")
    summary = TrainResult.load(run / "train")
    return {
        **_scores(name, run / "eval"),
        "train_minutes": manifest.stage("train").seconds / 60,
        "evaluate_minutes": manifest.stage("evaluate").seconds / 60,
        "held_out_general_ratio": [p.general_ratio for p in summary.phases],
    }


def _refinish_auto(run: Path, out: Path) -> float:
    """`run`'s training finished again with `train.interpolation auto` into out/train: the phases are
    done (their files are hard links), so only final/ is chosen and written. Returns the W chosen."""
    from labalign.settings.train import TrainSettings
    from labalign.train.phases import TrainConfig, train

    subprocess.run(["cp", "-al", str(run / "train"), str(out / "train")], check=True)
    shutil.rmtree(out / "train" / "final")
    record_path = out / "train" / "run.json"
    record = json.loads(record_path.read_text())
    record["settings"]["interpolation"] = "auto"
    record_path.unlink()  # a hard link: write a new file, never into the original run's
    record_path.write_text(json.dumps(record, indent=2))
    inputs = record["inputs"]
    result = train(
        TrainConfig(
            model=record["model"],
            out=out / "train",
            phase1=Path(inputs["phase1"]["path"]),
            phase2=Path(inputs["phase2"]["path"]),
            replay=Path(inputs["replay"]["path"]),
            settings=TrainSettings(**record["settings"]),
            resume=True,
            show_progress=False,
        )
    )
    return result.interpolation


def _interpolated(name: str, run: Path, w: float | str, taxonomy: Path) -> dict[str, Any]:
    """Phase 2's best of `run` merged at `w` toward the base (or at the W `auto` chooses) and evaluated
    with the run's own plan."""
    from labalign.config import load_settings
    from labalign.evaluate.suite import EvalPlan, evaluate_all
    from labalign.modeling.models import resolve_model
    from labalign.run.profiles import get_profile
    from labalign.train.interpolate import interpolate_checkpoint

    profile = get_profile("quick")
    settings = load_settings(defaults=profile.settings)
    base = resolve_model("default", settings.cache_dir)
    out = run / f"interpolated-{w}"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir()
    if w == "auto":
        w = f"auto={_refinish_auto(run, out):g}"
        (out / "final").symlink_to(Path("train") / "final")
    else:
        interpolate_checkpoint(base, run / "train" / "phase2" / "best", out / "final", float(w))
    plan = EvalPlan(
        model=str(out / "final"),
        base=str(base),
        judge=None,
        taxonomy=taxonomy,
        out=out / "eval",
        data=run / "data",
        evals=profile.evals,
        max_tokens=profile.eval_max_tokens,
        # The run's own answer cache: the base model's answers are there already (keys name the model).
        cache_path=run / "eval" / "cache.sqlite",
        seeds=profile.eval_seeds and not settings.sdg.seed_records,
    )
    evaluate_all(plan, settings)
    row = _scores(f"{name}@{w}", out / "eval")
    row.update(train_minutes=float("nan"), evaluate_minutes=float("nan"), held_out_general_ratio=[])
    return row


def _ci(d: dict[str, Any] | None, key: str = "mean") -> str:
    if not d or d.get(key) is None:
        return "-"
    return f"{d[key]:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="a finished `labalign run` directory")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "tradeoff")
    parser.add_argument("--methods", default="none,replay,kl,both")  # "profile": the defaults as they are
    parser.add_argument("--set", action="append", default=[], help="NAME:KEY=VALUE, a train setting")
    parser.add_argument("--taxonomy", type=Path, default=ROOT / "examples" / "taxonomy")
    parser.add_argument("--interpolations", default="", help="e.g. 1,0.75: also score merged weights")
    parser.add_argument("--existing", action="store_true", help="tabulate runs already in --out")
    args = parser.parse_args(argv)
    methods = named_settings(METHODS, args.set, strip="train.")
    rows = []
    for name in args.methods.split(","):
        run = args.out / name
        if not args.existing:
            _prepare(args.data, run)
            train = {f"train.{k}": v for k, v in methods[name].items()}
            code = run_labalign(name, run, args.taxonomy, train, ("train",))
            if code != 0:
                return code
        rows.append(_row(name, run))
        for w in filter(None, args.interpolations.split(",")):
            rows.append(_interpolated(name, run, w if w == "auto" else float(w), args.taxonomy))
    (args.out / "tradeoff.json").write_text(json.dumps(rows, indent=2) + "\n")
    head = f"{'method':<10} {'knowledge F1 gain':<26} {'meeting items':<26} {'formal rewrite':<26} "
    head += f"{'ppl ratio':>9}  {'general knowledge':<26} {'train min':>9}"
    print("\n" + head)
    for r in rows:
        print(
            f"{r['method']:<10} {_ci(r['knowledge']):<26} {_ci(r['meeting_action_items']):<26} "
            f"{_ci(r['formal_business_rewrite']):<26} {r['perplexity_ratio']:>9.3f}  "
            f"{_ci(r['general_knowledge'], 'delta'):<26} {r['train_minutes']:>9.1f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
