"""Gradient filtering in the chunked LM-head loss against the exact backward, on the embedded model.

One training step (decoder forward, chunked loss, backward) of LoRA on Gemma 3 270M over the example
document, timed with `grad_filter` at its default and at 0 (exact), alternating so that a noisy machine
affects both alike. Prints the median times of the loss with the whole backward (what the filter
changes) and of the whole step, their ratios, and how far the filtered grad(hidden) is from the exact
one.

    python benchmarks/loss_grad_filter.py [--steps 4] [--rows 8] [--tokens 96]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from labalign.modeling.loss import GRAD_FILTER_EPS, chunked_cross_entropy_sum, head_spec

EXAMPLE_LEAF = (
    Path(__file__).resolve().parent.parent / "examples/taxonomy/knowledge/history/quillmarrow_island"
)
DOCUMENT = EXAMPLE_LEAF / "quillmarrow_island.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rows", type=int, default=8, help="sequences per step")
    parser.add_argument("--tokens", type=int, default=96, help="tokens per sequence (all are targets)")
    args = parser.parse_args()

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from labalign.llm.default_model import default_hf_dir  # converts the embedded GGUF once
    from labalign.paths import default_cache_dir

    model_dir = default_hf_dir(default_cache_dir())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=32, lora_alpha=64, target_modules="all-linear"))
    lm = model.get_base_model()
    ids = tokenizer(DOCUMENT.read_text())["input_ids"]
    need = args.rows * (args.tokens + 1)
    batch = torch.tensor((ids * (need // len(ids) + 1))[:need]).view(args.rows, args.tokens + 1)
    inputs, targets = batch[:, :-1], batch[:, 1:]
    spec = head_spec(lm)

    def step(grad_filter: float) -> tuple[float, torch.Tensor]:
        hidden = lm.get_decoder()(input_ids=inputs, use_cache=False).last_hidden_state
        hidden.retain_grad()
        started = time.perf_counter()
        loss, _ = chunked_cross_entropy_sum(hidden, targets, spec, grad_filter=grad_filter)
        loss.backward()
        model.zero_grad(set_to_none=True)
        assert hidden.grad is not None
        return time.perf_counter() - started, hidden.grad.detach().clone()

    loss_bwd: dict[float, list[float]] = {GRAD_FILTER_EPS: [], 0.0: []}
    total: dict[float, list[float]] = {GRAD_FILTER_EPS: [], 0.0: []}
    grads: dict[float, torch.Tensor] = {}
    step(0.0)  # warm-up: oneDNN primitives, allocator
    for _ in range(args.steps):
        for eps in (GRAD_FILTER_EPS, 0.0):
            started = time.perf_counter()
            seconds, grads[eps] = step(eps)
            loss_bwd[eps].append(seconds)
            total[eps].append(time.perf_counter() - started)
    err = (grads[GRAD_FILTER_EPS] - grads[0.0]).norm() / grads[0.0].norm()
    targets_n = args.rows * args.tokens
    print(f"{targets_n} targets per step, {args.steps} steps each, medians:")
    for eps, label in ((0.0, "exact backward"), (GRAD_FILTER_EPS, f"filtered at {GRAD_FILTER_EPS:.1e}")):
        print(
            f"  {label:22s} loss + backward {statistics.median(loss_bwd[eps]):6.2f} s, "
            f"whole step {statistics.median(total[eps]):6.2f} s"
        )
    loss_ratio = statistics.median(loss_bwd[0.0]) / statistics.median(loss_bwd[GRAD_FILTER_EPS])
    step_ratio = statistics.median(total[0.0]) / statistics.median(total[GRAD_FILTER_EPS])
    print(
        f"speed-up of the filter: loss + backward {loss_ratio:.2f}x, step {step_ratio:.2f}x; "
        f"grad(hidden) relative error {float(err):.1e}"
    )


if __name__ == "__main__":
    main()
