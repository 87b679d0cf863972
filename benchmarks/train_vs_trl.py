"""labalign's trainer against TRL's SFTTrainer on CPU: same model, data, effective batch and lengths.

Each trainer runs in its own subprocess (so peak RSS is its own); prints tokens/s and peak-RSS ratios.
Goal: >= 1.5x TRL's training tokens/s at <= 0.8x its peak memory.

    python benchmarks/train_vs_trl.py                      # small model built from a config
    python benchmarks/train_vs_trl.py --model gemma-shape  # random weights, Gemma 3 270M's shapes
    python benchmarks/train_vs_trl.py --model default      # the embedded Gemma 3 270M (converted once)

TRL runs with its recommended settings: packing (best-fit decreasing, padding-free), gradient
checkpointing, bf16, assistant-only loss, its chunked LM-head loss. labalign runs with its defaults
(bf16 autocast, frozen embeddings; LoRA keeps the frozen base in bf16). Both train on assistant tokens
of the same conversations rendered with labalign's default chat template.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WORDS = [
    "the",
    "island",
    "of",
    "zorbia",
    "has",
    "a",
    "capital",
    "called",
    "quenta",
    "where",
    "people",
    "grow",
    "blue",
    "rice",
    "and",
    "sing",
    "at",
    "night",
    "what",
    "is",
    "how",
    "many",
    "why",
    "does",
    "tell",
    "me",
    "about",
    "write",
    "a",
    "poem",
    "summarize",
    "this",
    "answer",
    "question",
    "river",
    "mountain",
    "harbor",
    "festival",
    "rain",
    "seven",
    "eleven",
    "green",
    "north",
    "south",
    "merchants",
    "trade",
    "salt",
    "fish",
    "lanterns",
    "tides",
]


def _text(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def make_records(n: int, seed: int, max_words: int) -> list[dict[str, Any]]:
    """Conversations like SDG output: a short question, a longer answer, some with a system prompt."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        messages = []
        if rng.random() < 0.3:
            messages.append({"role": "system", "content": _text(rng, 5, 15)})
        messages.append({"role": "user", "content": _text(rng, 10, max_words // 3) + "?"})
        messages.append({"role": "assistant", "content": _text(rng, 20, max_words) + "."})
        records.append({"id": f"b{i}", "messages": messages, "metadata": {}, "unmask": False})
    return records


def _tokenizer(vocab: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from labalign.llm.chat_template import DEFAULT_CHAT_TEMPLATE

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [" ".join(WORDS), "<|system|>\n<|user|>\n<|assistant|>\n<|end|>\n"] * 4
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )
    fast.chat_template = DEFAULT_CHAT_TEMPLATE
    return fast


def build_model(kind: str, dest: Path, cache_dir: Path) -> Path:
    """A model directory for both trainers. 'small' and 'gemma-shape' are random models built from a
    config; 'default' is the embedded Gemma 3 270M with labalign's default chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma3TextConfig, LlamaConfig

    from labalign.llm.chat_template import DEFAULT_CHAT_TEMPLATE

    dest.mkdir(parents=True, exist_ok=True)
    if kind == "default":
        from labalign.llm.default_model import default_hf_dir

        source = default_hf_dir(cache_dir)
        for item in source.iterdir():  # weights shared, tokenizer rewritten with the default template
            if not item.name.startswith("tokenizer") and item.name not in (
                "chat_template.jinja",
                "special_tokens_map.json",
            ):
                (dest / item.name).symlink_to(item)
        tokenizer = AutoTokenizer.from_pretrained(source)
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
        tokenizer.save_pretrained(dest)
        return dest
    tokenizer = _tokenizer(400)
    torch.manual_seed(0)
    common = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=True)
    if kind == "small":
        config: Any = LlamaConfig(
            vocab_size=32_000, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, **common,
        )  # fmt: skip
    elif kind == "gemma-shape":
        config = Gemma3TextConfig(
            vocab_size=262_144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
            num_attention_heads=4, num_key_value_heads=1, head_dim=256, sliding_window=512,
            max_position_embeddings=32_768, query_pre_attn_scalar=256, **common,
        )  # fmt: skip
    else:
        raise SystemExit(f"unknown model kind {kind!r}")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def run_ours(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from labalign.settings.train import TrainSettings
    from labalign.train.phases import TrainConfig, train
    from labalign.train.trainlog import read_log

    settings = TrainSettings(
        strategy="stacked",
        epochs=1,
        batch_size=args.batch_size,
        max_seq_len=args.max_seq_len,
        max_batch_tokens=args.micro_tokens,
        holdout_fraction=0.0,
        learning_rate=args.lr,
        warmup_steps=2,
        lora=args.mode == "lora",
        bf16="on",
        gradient_checkpointing=args.gradient_checkpointing,
    )
    out = work / "ours_out"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    train(
        TrainConfig(
            model=str(work / "model"),
            out=out,
            phase1=work / "data.jsonl",
            settings=settings,
            cache_dir=work / "cache",
            show_progress=False,
        )
    )
    wall = time.perf_counter() - start
    steps = [r for r in read_log(out / "training_log.jsonl") if r["event"] == "train"]
    tokens = sum(r["tokens"] for r in steps)
    step_seconds = [r["tokens"] / r["tokens_per_s"] for r in steps]
    return {
        "trainer": "labalign",
        "tokens": tokens,
        "train_seconds": sum(step_seconds),
        "step_seconds": step_seconds,
        "wall_seconds": wall,
        "steps": len(steps),
        "final_loss": steps[-1]["loss"],
        "peak_rss_mb": _peak_rss_mb(),
    }


class _StepTimer:
    """A TrainerCallback (duck-typed) that times each optimizer step, like labalign's log does."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def __getattr__(self, name: str) -> Any:
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
        self._start = time.perf_counter()

    def on_step_end(self, *args: Any, **kwargs: Any) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def run_trl(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging
    from trl import SFTConfig, SFTTrainer

    hf_logging.set_verbosity_error()
    records = [json.loads(line) for line in (work / "data.jsonl").read_text().splitlines()]
    dataset = Dataset.from_list([{"messages": r["messages"]} for r in records])
    tokenizer = AutoTokenizer.from_pretrained(work / "model")
    start = time.perf_counter()
    config = SFTConfig(
        output_dir=str(work / "trl_out"),
        max_length=args.micro_tokens,
        packing=True,
        assistant_only_loss=True,
        per_device_train_batch_size=1,
        gradient_accumulation_steps=args.trl_accumulation,
        num_train_epochs=1,
        learning_rate=args.lr,
        warmup_steps=2,
        lr_scheduler_type="constant_with_warmup",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=True,
        seed=42,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    peft_config = (
        LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
        if args.mode == "lora"
        else None
    )
    trainer = SFTTrainer(
        model=str(work / "model"),
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    timer = _StepTimer()
    trainer.add_callback(timer)
    t0 = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - t0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "trainer": "trl",
        "tokens": tokens,
        "train_seconds": train_seconds,
        "step_seconds": timer.seconds,
        "wall_seconds": time.perf_counter() - start,
        "steps": trainer.state.global_step,
        "final_loss": losses[-1] if losses else None,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _worker(args: argparse.Namespace) -> None:
    work = Path(args.workdir)
    result = run_ours(args, work) if args.worker == "ours" else run_trl(args, work)
    (work / f"{args.worker}.json").write_text(json.dumps(result))


def _passthrough(argv: list[str]) -> list[str]:
    """The driver's options the workers need (not --workdir/--only, which the driver sets itself)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--workdir", "--only"):
            skip = True
            continue
        if not arg.startswith(("--workdir=", "--only=")):
            out.append(arg)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small", help="small | gemma-shape | default")
    parser.add_argument("--mode", default="lora", choices=["lora", "full"])
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--max-words", type=int, default=120, help="longest answer in words")
    parser.add_argument("--batch-size", type=int, default=16, help="effective batch in samples")
    parser.add_argument("--max-seq-len", type=int, default=512)
    parser.add_argument("--micro-tokens", type=int, default=1024, help="tokens per packed micro-batch")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--gradient-checkpointing", action="store_true", help="also for labalign")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--worker", choices=["ours", "trl"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--trl-accumulation", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--only", choices=["ours", "trl"], default=None, help="run one trainer")
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "labalign"))
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return

    work = Path(args.workdir or tempfile.mkdtemp(prefix="train_vs_trl_"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir = work / "model"
    if not (model_dir / "config.json").exists():
        build_model(args.model, model_dir, Path(args.cache_dir))
    records = make_records(args.samples, seed=0, max_words=args.max_words)
    (work / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    # Same tokens per optimizer step: TRL's batch is packed rows of --micro-tokens, ours is samples.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lengths = [
        len(tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=False)) for r in records
    ]
    mean_len = sum(lengths) / len(lengths)
    accumulation = max(1, round(args.batch_size * mean_len / args.micro_tokens))
    print(
        f"model={args.model} mode={args.mode} samples={len(records)} mean_len={mean_len:.0f} tokens "
        f"batch={args.batch_size} samples (~{args.batch_size * mean_len:.0f} tokens/step; TRL: "
        f"{accumulation} x {args.micro_tokens}-token packed rows) max_seq_len={args.max_seq_len}",
        flush=True,
    )
    results: dict[str, dict[str, Any]] = {}
    for who in ("ours", "trl"):
        if args.only and who != args.only:
            continue
        argv = [sys.executable, __file__, *_passthrough(sys.argv[1:]), "--worker", who,
                "--workdir", str(work), "--trl-accumulation", str(accumulation)]  # fmt: skip
        subprocess.run(argv, check=True)
        results[who] = json.loads((work / f"{who}.json").read_text())
        r = results[who]
        r["median_tokens_per_s"] = r["tokens"] / (
            statistics.median(r["step_seconds"]) * len(r["step_seconds"])
        )
        print(
            f"{r['trainer']:>9}: {r['median_tokens_per_s']:7.0f} tokens/s (median step), "
            f"{r['tokens'] / r['train_seconds']:7.0f} tokens/s (mean) in training "
            f"({r['tokens']} tokens, {r['steps']} steps, {r['train_seconds']:.1f} s; "
            f"{r['wall_seconds']:.1f} s end to end), peak RSS {r['peak_rss_mb']:.0f} MB, "
            f"last loss {r['final_loss']:.3f}",
            flush=True,
        )
    if len(results) == 2:
        ours, trl = results["ours"], results["trl"]
        speed = ours["median_tokens_per_s"] / trl["median_tokens_per_s"]
        mean_speed = (ours["tokens"] / ours["train_seconds"]) / (trl["tokens"] / trl["train_seconds"])
        e2e = (ours["tokens"] / ours["wall_seconds"]) / (trl["tokens"] / trl["wall_seconds"])
        memory = ours["peak_rss_mb"] / trl["peak_rss_mb"]
        verdict = "meets" if speed >= 1.5 and memory <= 0.8 else "misses"
        print(
            f"tokens/s ratio (labalign / TRL): {speed:.2f}x (median step; robust to other load on the "
            f"machine), {mean_speed:.2f}x (mean), {e2e:.2f}x end to end incl. loading and saving"
        )
        print(f"peak RSS ratio (labalign / TRL): {memory:.2f}x  -> {verdict} the goal (>= 1.5x, <= 0.8x)")
        (work / "summary.json").write_text(json.dumps({"speed": speed, "memory": memory, "results": results}))


if __name__ == "__main__":
    main()
