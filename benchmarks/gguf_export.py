"""GGUF export fidelity: the exported file run by llama.cpp against the Hugging Face model it came from.

Exports MODEL (a run's train/final) with `labalign.export.export_gguf` at each quantization, then asks
every file and the Hugging Face model (transformers, float32, the peer and reference) the example's
held-out knowledge questions in the model's chat template, greedy. The prompts go in as the same token
ids, so the comparison is of the weights; tokenization is compared separately (llama.cpp's tokenizer
from the file's metadata against the Hugging Face tokenizer, on the rendered prompts).

Prints per file: its size, the export time, how many answers are token-for-token identical to
transformers', the mean length of the common prefix, and decoding time relative to transformers'.

    python benchmarks/gguf_export.py --model runs/quick/train/final [--questions 20] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from labalign.export import Quant, export_gguf

QUESTIONS = (
    Path(__file__).resolve().parent.parent
    / "examples/heldout/knowledge/history/quillmarrow_island/heldout.jsonl"
)


def _prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="Hugging Face model folder")
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--quants", default="f16,q8_0,q4_k_m")
    args = parser.parse_args()

    import llama_cpp
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    rows = [json.loads(line) for line in QUESTIONS.read_text().splitlines()][: args.questions]
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": r["question"]}], tokenize=False, add_generation_prompt=True
        )
        for r in rows
    ]
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    start = time.perf_counter()
    reference = []
    for prompt_ids in ids:
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=args.max_tokens, do_sample=False)
        reference.append(out[0][len(prompt_ids) :].tolist())
    hf_seconds = time.perf_counter() - start
    del model

    print(f"model {args.model}, {len(ids)} held-out questions, greedy, up to {args.max_tokens} tokens")
    print(f"transformers float32 (reference): {hf_seconds:.1f} s")
    header = f"{'file':<8} {'size MB':>8} {'export s':>9} {'identical':>10} {'mean prefix':>12} "
    print(header + f"{'decode vs transformers':>23} {'tokenization':>13}")
    with tempfile.TemporaryDirectory() as tmp:
        for quant in [Quant(q) for q in args.quants.split(",")]:
            path = Path(tmp) / f"m-{quant}.gguf"
            start = time.perf_counter()
            result = export_gguf(args.model, path, quant)
            export_s = time.perf_counter() - start
            llm = llama_cpp.Llama(model_path=str(path), n_ctx=1024, n_threads=2, verbose=False)
            same_tokens = sum(
                llm.tokenize(p.encode(), add_bos=False, special=True) == i
                for p, i in zip(prompts, ids, strict=True)
            )
            start = time.perf_counter()
            prefixes, identical = [], 0
            for prompt_ids, ref in zip(ids, reference, strict=True):
                llm.reset()
                got: list[int] = []
                for token in llm.generate(prompt_ids, temp=0.0, top_k=1):
                    got.append(token)
                    if token == llm.token_eos() or len(got) == args.max_tokens:
                        break
                ref_cut = ref[: len(ref)]
                identical += got == ref_cut
                prefixes.append(_prefix(got, ref_cut))
            cpp_s = time.perf_counter() - start
            llm.close()
            print(
                f"{quant!s:<8} {result.bytes / 1e6:>8.0f} {export_s:>9.1f} {identical:>5}/{len(ids):<4} "
                f"{statistics.mean(prefixes):>12.1f} {hf_seconds / cpp_s:>21.1f}x {same_tokens:>6}/{len(ids)}"
            )


if __name__ == "__main__":
    main()
