"""Log-likelihood scoring in bf16 against the peer, the same evaluations in fp32, on one tuned model.

    python benchmarks/scoring_dtype.py --model runs/quick/train/final [--base default]
        [--taxonomy examples/taxonomy] [--out runs/scoring_dtype]

Runs `labalign evaluate` forgetting, general-knowledge and mmlu-branch once per dtype, alternating the
dtypes per evaluation, each with an empty evaluation cache so that the base model is scored too (as on
a machine's first run; the converted models are linked in from the labalign cache, so no conversion is
timed). Prints per evaluation the seconds in each dtype, their ratio, and both results side by side:
the speed is only worth having if the numbers hold. Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

EVALS = ("forgetting", "general-knowledge", "mmlu-branch")
DTYPES = ("float32", "bfloat16")
RESULT_FILE = {
    "forgetting": "forgetting.json",
    "general-knowledge": "general_knowledge.json",
    "mmlu-branch": "mmlu_branch.json",
}


def _cache_dir() -> Path:
    from labalign.config import load_settings

    return Path(load_settings().cache_dir)


def _evaluate(name: str, dtype: str, args: argparse.Namespace, out: Path, cache: Path) -> float:
    cmd = [sys.executable, "-m", "labalign", "evaluate", name]
    if name == "mmlu-branch":
        cmd.append(str(args.taxonomy))
    cmd += ["--model", str(args.model), "--base", args.base, "--scoring-dtype", dtype, "--out", str(out)]
    env = {**os.environ, "LABALIGN_CACHE_DIR": str(cache)}
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _summary(name: str, result: dict[str, Any]) -> str:
    if name == "forgetting":
        return f"perplexity ratio {result['ratio']:.4f}"
    return (
        f"base {result['base']:.3f} tuned {result['tuned']:.3f} delta {result['delta']:+.3f} "
        f"[{result['ci_low']:+.3f}, {result['ci_high']:+.3f}]"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True, help="the tuned model (a run's train/final)")
    parser.add_argument("--base", default="default", help="the model before tuning")
    parser.add_argument("--taxonomy", type=Path, default=Path("examples/taxonomy"))
    parser.add_argument("--out", type=Path, default=Path("runs/scoring_dtype"))
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    models = _cache_dir() / "models"
    rows: list[dict[str, Any]] = []
    for name in EVALS:
        for dtype in DTYPES:
            cache = args.out / "cache" / f"{name}-{dtype}"
            cache.mkdir(parents=True)
            if models.is_dir():
                subprocess.run(["cp", "-al", str(models), str(cache / "models")], check=True)
            out = args.out / dtype
            seconds = _evaluate(name, dtype, args, out, cache)
            result = json.loads((out / RESULT_FILE[name]).read_text())
            rows.append({"evaluation": name, "dtype": dtype, "seconds": seconds, "result": result})
            print(f"{name:18s} {dtype:9s} {seconds:7.1f} s  {_summary(name, result)}", flush=True)
            shutil.rmtree(cache)
    print()
    for name in EVALS:
        fp32, bf16 = (next(r for r in rows if r["evaluation"] == name and r["dtype"] == d) for d in DTYPES)
        print(f"{name:18s} bf16 is {fp32['seconds'] / bf16['seconds']:.2f}x the speed of fp32")
    total = {d: sum(r["seconds"] for r in rows if r["dtype"] == d) for d in DTYPES}
    print(f"{'all three':18s} bf16 is {total['float32'] / total['bfloat16']:.2f}x the speed of fp32")
    (args.out / "scoring_dtype.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
