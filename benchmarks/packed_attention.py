"""Training steps with one SDPA call per packed sample (labalign's CPU default) against transformers'
SDPA with the row's block-diagonal mask, on the embedded model.

LoRA (rank 32, all linear layers, the quick profile's) on Gemma 3 270M; each step is one packed row of
`--samples` pieces of the example document with lengths like the quick profile's fact questions (40 to
90 tokens, all trained). The two models alternate step by step so that a noisy machine affects both
alike. Prints median step times, the ratio, and the largest loss difference.

    python benchmarks/packed_attention.py [--steps 6] [--samples 8]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import torch

from labalign.settings.train import TrainSettings
from labalign.train.model import CausalLMLoss, load_student
from labalign.train.packing import IGNORE

EXAMPLE_LEAF = (
    Path(__file__).resolve().parent.parent / "examples/taxonomy/knowledge/history/quillmarrow_island"
)
DOCUMENT = EXAMPLE_LEAF / "quillmarrow_island.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--samples", type=int, default=8, help="samples per packed row")
    args = parser.parse_args()

    from labalign.llm.default_model import default_hf_dir  # converts the embedded GGUF once
    from labalign.paths import default_cache_dir

    model_dir = default_hf_dir(default_cache_dir())
    device = torch.device("cpu")
    losses: dict[str, CausalLMLoss] = {}
    for name, attn in (("mask", "sdpa"), ("per-sample", None)):
        settings = TrainSettings(lora=True, lora_rank=32, lora_alpha=64, attn_implementation=attn)
        student = load_student(model_dir, settings, device=device, bf16=False, seed=0)
        losses[name] = CausalLMLoss(student, None)
    tokenizer = student.tokenizer
    ids: list[int] = tokenizer(DOCUMENT.read_text())["input_ids"]
    rng = random.Random(0)

    def row() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pieces, positions, targets = [], [], []
        for _ in range(args.samples):
            length = rng.randint(40, 90)
            start = rng.randrange(len(ids) - length)
            piece = ids[start : start + length]
            pieces += piece
            positions += range(length)
            targets += [*piece[1:], IGNORE]
        return torch.tensor([pieces]), torch.tensor([positions]), torch.tensor([targets])

    times: dict[str, list[float]] = {name: [] for name in losses}
    worst = 0.0
    for step in range(args.steps + 1):  # the first step of each warms up kernels and is not timed
        batch = row()
        values = {}
        for name, module in losses.items():
            started = time.perf_counter()
            total, count = module(*batch)
            (total / count).backward()
            module.zero_grad(set_to_none=True)
            if step:
                times[name].append(time.perf_counter() - started)
            values[name] = float((total / count).detach())
        worst = max(worst, abs(values["mask"] - values["per-sample"]))
    tokens = int(batch[0].shape[1])
    mask, per_sample = statistics.median(times["mask"]), statistics.median(times["per-sample"])
    print(f"{args.steps} steps of one packed row ({args.samples} samples, about {tokens} tokens)")
    print(f"  transformers SDPA, block-diagonal mask: {mask:.2f} s/step")
    print(f"  labalign, one SDPA call per sample:     {per_sample:.2f} s/step")
    print(f"  ratio: {mask / per_sample:.2f}x; largest loss difference {worst:.2e}")


if __name__ == "__main__":
    main()
