"""How far better questions would take the knowledge gain: a diagnostic, never a way to train.

    python benchmarks/knowledge_ceiling.py --data runs/quick [--out runs/ceiling] [--existing]

`--data` is a finished `labalign run` of the example taxonomy. The script copies its data, adds half of
the hand-written held-out knowledge questions (every even line of `examples/heldout/.../heldout.jsonl`,
with their reference answers) to phase 1 as ordinary knowledge records, and trains and evaluates that
through `labalign run --from train` with the same settings. It then answers the held-out questions with
phase 2's weights before the merge back to the base (W = 1) as well, and prints the token-F1 gain over
the base on each half, for the original run and the diagnostic run:

- the trained half says what the student keeps of question/answer pairs it was trained on verbatim
  (a ceiling for what any held-out score can reach with this student and W);
- the other half says whether well-formed questions about some facts teach the student to answer
  questions about the rest (knowledge extraction), against the run's own teacher-written questions.

The diagnostic run has seen half of the evaluation's questions: its scores are never a result of
labalign's, only a measure of what question quality is worth.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from forgetting_tradeoff import ROOT, _prepare
from phase_interpolation import answer_heldout

from labalign.evaluate.stats import paired_delta

LEAF = "knowledge/history/quillmarrow_island"


def _heldout(taxonomy: Path) -> list[dict[str, str]]:
    path = taxonomy.parent / "heldout" / LEAF / "heldout.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _add_questions(run: Path, questions: list[dict[str, str]]) -> int:
    """Append the questions to RUN/data/phase1.jsonl, shaped as the run's own knowledge records."""
    phase1 = run / "data" / "phase1.jsonl"
    records = [json.loads(line) for line in phase1.read_text().splitlines() if line.strip()]
    template = next(r for r in records if r["metadata"].get("leaf") == LEAF)
    with phase1.open("a") as f:
        for i, q in enumerate(questions):
            record = copy.deepcopy(template)
            record["id"] = f"ceiling-{i}"
            record["messages"] = [
                {"role": "user", "content": q["question"]},
                {"role": "assistant", "content": q["reference"]},
            ]
            record["metadata"]["variant"] = "heldout_diagnostic"
            f.write(json.dumps(record) + "\n")
    return len(questions)


def _answers_at_w1(run: Path, taxonomy: Path) -> Path:
    """Phase 2's best (before the merge) answering the held-out questions, as the run's evaluation does."""
    out = run / "eval_w1"
    if not (out / "branch_answers.jsonl").is_file():
        answer_heldout(run / "train" / "phase2" / "best", run, out, taxonomy)
    return out / "branch_answers.jsonl"


def _halves(answers: Path, order: dict[str, int]) -> dict[str, Any]:
    rows = [json.loads(line) for line in answers.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["leaf"] == LEAF and r["question"] in order]
    out: dict[str, Any] = {}
    for name, parity in (("trained", 0), ("untrained", 1)):
        half = [r for r in rows if order[r["question"]] % 2 == parity]
        d = paired_delta([r["model"]["f1"] for r in half], [r["base"]["f1"] for r in half])
        tuned = sum(r["model"]["f1"] for r in half) / len(half)
        out[name] = {"n": len(half), "tuned": tuned, "mean": d.mean, "ci_low": d.low, "ci_high": d.high}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="a finished `labalign run` directory")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "ceiling")
    parser.add_argument("--taxonomy", type=Path, default=ROOT / "examples" / "taxonomy")
    parser.add_argument("--existing", action="store_true", help="tabulate the run already in --out")
    args = parser.parse_args(argv)
    questions = _heldout(args.taxonomy)
    order = {q["question"]: i for i, q in enumerate(questions)}
    run = args.out / "diagnostic"
    if not args.existing:
        _prepare(args.data, run)
        added = _add_questions(run, questions[::2])
        print(f"== {added} held-out questions added to {run}/data/phase1.jsonl", flush=True)
        cmd = [sys.executable, "-m", "labalign", "run", str(args.taxonomy), "--out", str(run)]
        code = subprocess.call([*cmd, "--from", "train"])
        if code != 0:
            return code
    rows: list[dict[str, Any]] = []
    for name, path in (("the run", args.data), ("diagnostic", run)):
        final = _halves(path / "eval" / "branch_answers.jsonl", order)
        w1 = _halves(_answers_at_w1(path, args.taxonomy), order)
        rows.append({"run": name, "path": str(path), "final": final, "w1": w1})
    (args.out / "ceiling.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"{'run':<11} {'weights':<14} {'half':<10} {'n':>3} {'tuned F1':>9}  gain over the base [95% CI]")
    for row in rows:
        for weights in ("final", "w1"):
            for half, d in row[weights].items():
                label = "final/ (W)" if weights == "final" else "phase 2, W=1"
                gain = f"{d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
                print(f"{row['run']:<11} {label:<14} {half:<10} {d['n']:>3} {d['tuned']:>9.3f}  {gain}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
