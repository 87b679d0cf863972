"""Near-duplicate removal at large N: MinHash LSH (`sdg.dedup: minhash`) against the exact ROUGE-L scan.

The peer is labalign's own ROUGE-L index (`sdg.dedup: rouge`, itself 67x Google's rouge-score, see
dedup_vs_rouge_score.py): the Self-Instruct rule, every candidate against every kept text. Both run
the same greedy keep-if-no-near-copy loop over the same texts: sentences of 10-25 words from a
Zipf-distributed 3000-word vocabulary, 30% of them a copy of an earlier text with 1 to 7 word edits
(replace, delete, insert), so that the set holds pairs on both sides of the 0.7 threshold. Printed
per size: seconds, the speed-up, and how often the two agree on keep/drop (with the near-duplicates
ROUGE-L drops that MinHash keeps, and the reverse).

    python benchmarks/dedup_minhash.py                  # 1000, 5000 and 20000 texts (~3 min)
    python benchmarks/dedup_minhash.py --sizes 2000
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Sequence

from labalign.sdg.dedup import MinHashIndex, NearDuplicateIndex, NearDuplicates, lsh_bands


def texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(3000)]
    weights = [1 / (i + 1) for i in range(len(vocab))]  # Zipf: a few words are in most texts
    out: list[str] = []
    for _ in range(n):
        if out and rng.random() < 0.3:
            words = rng.choice(out).split()
            for _ in range(rng.randint(1, 7)):
                op, at = rng.random(), rng.randrange(len(words))
                if op < 0.4:
                    words[at] = rng.choices(vocab, weights)[0]
                elif op < 0.7 and len(words) > 3:
                    del words[at]
                else:
                    words.insert(at, rng.choices(vocab, weights)[0])
            out.append(" ".join(words))
        else:
            out.append(" ".join(rng.choices(vocab, weights, k=rng.randint(10, 25))))
    return out


def run(index: NearDuplicates, items: Sequence[str]) -> tuple[float, list[bool]]:
    """Seconds and the keep decision per text."""
    kept: list[bool] = []
    start = time.perf_counter()
    for text in items:
        keep = index.find(text) is None
        if keep:
            index.add(text)
        kept.append(keep)
    return time.perf_counter() - start, kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,5000,20000", help="comma-separated numbers of texts")
    parser.add_argument("--threshold", type=float, default=0.7)
    args = parser.parse_args(argv)
    bands, rows = lsh_bands(args.threshold)
    print(f"ROUGE-L threshold {args.threshold}; MinHash: 128 permutations, {bands} bands x {rows} rows")
    header = (
        f"{'texts':>6} {'rouge s':>8} {'minhash s':>9} {'speed-up':>8} {'agree':>7} "
        f"{'kept r/m':>11} {'missed':>6} {'extra':>5}"
    )
    print(header)
    for n in (int(s) for s in args.sizes.split(",")):
        items = texts(n)
        rouge_s, rouge_kept = run(NearDuplicateIndex(args.threshold), items)
        minhash_s, minhash_kept = run(MinHashIndex(args.threshold), items)
        agree = sum(a == b for a, b in zip(rouge_kept, minhash_kept, strict=True)) / n
        missed = sum(m and not r for r, m in zip(rouge_kept, minhash_kept, strict=True))
        extra = sum(r and not m for r, m in zip(rouge_kept, minhash_kept, strict=True))
        print(
            f"{n:>6} {rouge_s:>8.2f} {minhash_s:>9.2f} {rouge_s / minhash_s:>7.1f}x {agree:>7.2%} "
            f"{sum(rouge_kept):>5}/{sum(minhash_kept):<5} {missed:>6} {extra:>5}",
            flush=True,
        )
    print("missed: near-duplicates ROUGE-L drops and MinHash keeps; extra: the reverse")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
