"""ROUGE-L near-duplicate filtering: labalign's rapidfuzz LCS against Google's `rouge-score` package.

Same 500 synthetic 15-token questions, same greedy keep-if-below-0.7 loop that Self-Instruct uses.
Needs `pip install rouge-score` (not a labalign dependency). Prints both times and the ratio.
"""

from __future__ import annotations

import random
import time

from rouge_score import rouge_scorer

from labalign.sdg.dedup import NearDuplicateIndex


def main() -> None:
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(300)]
    questions = [" ".join(rng.choice(vocab) for _ in range(15)) for _ in range(500)]

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    start = time.perf_counter()
    kept: list[str] = []
    for q in questions:
        if all(scorer.score(k, q)["rougeL"].fmeasure < 0.7 for k in kept):
            kept.append(q)
    peer = time.perf_counter() - start

    start = time.perf_counter()
    index = NearDuplicateIndex(0.7)
    for q in questions:
        if index.find(q) is None:
            index.add(q)
    ours = time.perf_counter() - start

    assert len(kept) == len(index), (len(kept), len(index))
    print(f"rouge-score: {peer:.3f} s   labalign: {ours:.3f} s   kept {len(index)} of {len(questions)}")
    print(f"speed-up vs rouge-score: {peer / ours:.1f}x")


if __name__ == "__main__":
    main()
