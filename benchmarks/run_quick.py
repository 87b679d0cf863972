"""Time the default `labalign run` on the example taxonomy, per stage, and check the quick profile's goals.

    python benchmarks/run_quick.py [--out runs/bench-quick] [--resume]

Goals (issue 7): the quick profile finishes in <= 20 minutes on 2 CPU cores, and the tuned student
beats the base model on the example taxonomy's held-out knowledge questions (examples/heldout, never
used for generation or training) by a reference-F1 margin whose 95% bootstrap interval excludes zero.

Prints the time per stage, the total as a ratio of the 20-minute budget, and the held-out F1 of both
models per leaf with the paired delta. The first use of the embedded model converts it once (about
50 s, cached afterwards) and the base model's general-text perplexity is computed once (about 90 s);
the script says whether those were already cached.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from labalign.config import load_settings
from labalign.evaluate.stats import paired_delta

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 20 * 60


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-quick")
    parser.add_argument(
        "--resume", action="store_true", help="keep an existing run directory (no timing claim)"
    )
    args = parser.parse_args(argv)
    if args.out.exists() and not args.resume:
        shutil.rmtree(args.out)
    cache = load_settings().cache_dir
    converted_before = any((cache / "models" / "hf").glob("*/config.json"))
    # The base model's general-text perplexity is cached per weights, like the conversion.
    scored_before = any((cache / "eval" / "perplexity").glob("*.json"))
    start = time.monotonic()
    code = subprocess.call(
        [sys.executable, "-m", "labalign", "run", str(ROOT / "examples" / "taxonomy"), "--out", str(args.out)]
    )
    wall = time.monotonic() - start
    if code != 0:
        print(f"labalign run failed with exit code {code}", file=sys.stderr)
        return code
    manifest = json.loads((args.out / "manifest.json").read_text())
    print("\nstage       seconds")
    for stage, record in manifest["stages"].items():
        print(f"{stage:<10} {record['seconds']:8.1f}")
    print(f"{'wall':<10} {wall:8.1f}   ({wall / BUDGET_S:.2f} of the 20-minute budget)")
    if not converted_before:
        print("(this run included the one-time conversion of the embedded model)")
    if scored_before:
        print(
            "(a perplexity was already cached: if it was the base model's, a first run on a new machine "
            "also scores the base on the general text once, about 90 s on 2 cores)"
        )

    answers = [
        json.loads(line) for line in (args.out / "eval" / "branch_answers.jsonl").read_text().splitlines()
    ]
    print("\nheld-out questions (examples/heldout), reference token F1")
    print(f"{'leaf':<60} {'n':>3} {'base':>6} {'tuned':>6}  delta [95% CI]")
    ok = True
    for leaf in sorted({a["leaf"] for a in answers}):
        rows = [a for a in answers if a["leaf"] == leaf and a["source"] == "heldout"]
        if not rows:
            continue
        tuned = [r["model"]["f1"] for r in rows]
        base = [r["base"]["f1"] for r in rows]
        d = paired_delta(tuned, base)
        print(
            f"{leaf:<60} {len(rows):>3} {sum(base) / len(rows):6.3f} {sum(tuned) / len(rows):6.3f}  "
            f"{d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}] W/T/L {d.wins}/{d.ties}/{d.losses}"
        )
        if leaf.startswith("knowledge/"):
            ok = ok and d.low > 0
    ok = ok and wall <= BUDGET_S
    print(f"\ngoals met: {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
