"""Knowledge data mixes, per minute of run time: which knowledge records teach the student most of a
document for the time they cost, with forgetting measured beside.

    python benchmarks/knowledge_mix.py --data runs/quick [--out runs/mix]
        [--mixes facts,pretraining,qa,documents] [--set NAME:sdg.KEY=VALUE] [--cold]

`--data` is a finished `labalign run` of the example taxonomy. Each mix is that run again through
`labalign run` with `sdg:` (and, if given, `train:`) settings changed by LABALIGN_* variables, so it
regenerates, retrains and re-evaluates. Without `--cold` the run's request cache comes along: teacher
answers already received are not asked again, so a mix's generation minutes count only its new calls;
with `--cold` every mix starts without it and its minutes are a fresh run's. Mixes:

- facts:       the quick profile as it is (fact questions for every document sentence, and the seeds);
- pretraining: + every document chunk as plain text, every token trained (InstructLab's pretraining);
- qa:          + LAB's knowledge Q&A pipeline (summaries, key facts, Q&A with three judges);
- documents:   + every chunk as the answer about its section;
- any NAME given with --set NAME:sdg.KEY=VALUE (several allowed).

Prints, per mix: held-out knowledge token-F1 gain [95% CI] (100 questions), MMLU-branch accuracy gain
[95% CI], base open-book F1 (the retrieval ceiling), perplexity ratio, phase-1 records, generate /
train / evaluate minutes, and F1 gain per run minute. Writes OUT/mix.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from forgetting_tradeoff import ROOT, _ci, _gain, _prepare, named_settings, run_labalign

from labalign.evaluate.results import BranchResult, load_result

MIXES: dict[str, dict[str, str]] = {
    "facts": {},
    "pretraining": {"sdg.document_pretraining": "true"},
    "qa": {"sdg.knowledge_qa": "true"},
    "documents": {"sdg.document_records": "true"},
}


def _row(name: str, run: Path) -> dict[str, Any]:
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    evals = run / "eval"
    branch = load_result(evals, "branch")
    if not isinstance(branch, BranchResult):
        raise SystemExit(f"{evals}: no branch result (skipped or not run)")
    forgetting = json.loads((evals / "forgetting.json").read_text())
    mb_path, ob_path = evals / "mmlu_branch.json", evals / "open_book.json"
    mb = json.loads(mb_path.read_text()) if mb_path.is_file() else {}
    ob = json.loads(ob_path.read_text()) if ob_path.is_file() else {}
    minutes = {s: stages[s]["seconds"] / 60 for s in ("generate", "train", "evaluate")}
    knowledge = _gain(branch, "quillmarrow_island")
    total = sum(minutes.values())
    return {
        "mix": name,
        "knowledge": knowledge,
        "mmlu_branch": {
            "mean": mb.get("delta"),
            **{k: mb.get(k) for k in ("ci_low", "ci_high", "base", "tuned")},
        },
        "open_book_base_f1": ob.get("base_open"),
        "perplexity_ratio": forgetting["ratio"],
        "phase1_records": stages["generate"]["summary"]["phase1_records"],
        "teacher_calls": stages["generate"]["summary"].get("teacher_calls"),
        "minutes": minutes,
        "f1_gain_per_minute": (knowledge or {}).get("mean", 0.0) / total if total else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="a finished `labalign run` directory")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "mix")
    parser.add_argument("--mixes", default="facts,pretraining,qa,documents")
    parser.add_argument("--set", action="append", default=[], help="NAME:SECTION.KEY=VALUE")
    parser.add_argument("--taxonomy", type=Path, default=ROOT / "examples" / "taxonomy")
    parser.add_argument("--cold", action="store_true", help="no request cache: every teacher call anew")
    parser.add_argument("--existing", action="store_true", help="tabulate runs already in --out")
    args = parser.parse_args(argv)
    mixes = named_settings(MIXES, args.set)
    rows = []
    for name in args.mixes.split(","):
        run = args.out / name
        if not args.existing:
            _prepare(args.data, run)
            if args.cold:
                (run / "data" / "cache.sqlite").unlink(missing_ok=True)
            code = run_labalign(name, run, args.taxonomy, mixes[name], ("sdg", "train"))
            if code != 0:
                return code
        rows.append(_row(name, run))
    (args.out / "mix.json").write_text(json.dumps(rows, indent=2) + "\n")
    head = (
        f"{'mix':<12} {'knowledge F1 gain':<26} {'MMLU-branch gain':<26} {'open-book':>9} {'ppl ratio':>9} "
    )
    head += f"{'records':>7} {'gen/train/eval min':>19} {'F1 per min':>10}"
    print("\n" + head)
    for r in rows:
        m = r["minutes"]
        times = f"{m['generate']:.1f}/{m['train']:.1f}/{m['evaluate']:.1f}"
        ob = "-" if r["open_book_base_f1"] is None else f"{r['open_book_base_f1']:.3f}"
        per_min = "-" if r["f1_gain_per_minute"] is None else f"{r['f1_gain_per_minute']:.4f}"
        print(
            f"{r['mix']:<12} {_ci(r['knowledge']):<26} {_ci(r['mmlu_branch']):<26} {ob:>9} "
            f"{r['perplexity_ratio']:>9.3f} {r['phase1_records']:>7} {times:>19} {per_min:>10}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
