"""Run profiles: settings that sit just above the built-in defaults (a config file, LABALIGN_* variables
and flags still win), plus which evaluations run.

- quick: the embedded Gemma 3 270M as teacher and student on a laptop CPU; minutes. Enough data and
  training for the student to learn the example taxonomy's facts, measurably.
- standard: a real teacher (an OpenAI-compatible server such as vLLM) and GPU training; hours.
- full: LAB-scale data and InstructLab's phased schedule (phase 1: 7 epochs, phase 2: 10); a GPU server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from labalign.errors import LabalignError
from labalign.evaluate.names import EVALUATIONS

KNOWLEDGE_EVALS = ("branch", "forgetting", "general-knowledge", "mmlu-branch")


@dataclass(frozen=True)
class Profile:
    name: str
    summary: str
    settings: dict[str, Any] = field(default_factory=dict)  # dotted keys, as in `labalign config`
    evals: tuple[str, ...] = KNOWLEDGE_EVALS
    eval_max_tokens: int = 256
    eval_seeds: bool = True  # also ask each leaf's seed questions (InstructLab's MT-Bench-branch does)
    # Shown instead of `summary` where training runs in fp32 on the CPU (no GPU, no native bf16): the
    # time a profile promises depends on that more than on anything else.
    fp32_cpu_summary: str | None = None

    def summary_here(self) -> str:
        """The summary for this machine: `fp32_cpu_summary` where training runs on the CPU (no CUDA GPU:
        the trainer's rule, so an Apple GPU counts as none) and that CPU has no native bf16."""
        if self.fp32_cpu_summary is None:
            return self.summary
        import torch

        from labalign.llm.hf import native_bf16

        on_cpu = not torch.cuda.is_available()
        return self.fp32_cpu_summary if on_cpu and not native_bf16("cpu") else self.summary


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            name="quick",
            summary="embedded 270M teacher and student on the CPU; about 18.5 minutes on 2 cores with native "
            "bf16 (first run; 15.5 after), forgetting within 10%",
            # Measured on 2 AVX2-only EPYC cores (docs/results.md): generate 6.8, train 21.8 (fp32),
            # evaluate 11.5 minutes, against 4.2 / 9.2 / 5.1 on 2 AVX512-BF16 cores.
            fp32_cpu_summary="embedded 270M teacher and student on the CPU; this CPU has no native bf16 "
            "(AVX512-BF16 or AMX), so training runs in fp32: about 40 minutes on 2 cores (first run), "
            "forgetting within 10%",
            settings={
                "sdg.samples_per_leaf": 6,
                "sdg.heldout_fraction": 0.2,
                # A 270M teacher's answers ramble; the hand-written seeds teach the answer style.
                "sdg.seed_records": True,
                # Knowledge from fact questions (every document sentence, answered in the document's
                # words): LAB's knowledge Q&A pipeline kept 4 samples for a third of the generation
                # time with this teacher, and long records (chunks, chunk-in-prompt variants) cost
                # more training time than they gained on the held-out facts.
                "sdg.knowledge_qa": False,
                "sdg.context_variants": False,
                "sdg.document_records": False,
                "sdg.replay_fraction": 0.3,
                # The 270M judges keep most rows (25 of 29 skill questions in the measured run), so the
                # shipped pipelines' 2x oversampling mostly paid for samples that were thrown away.
                "sdg.oversample": 1.4,
                # LoRA: about 1.5x the training tokens/s of full fine-tuning here (bf16 frozen base). A
                # constant rate: cosine decay halved forgetting but cut the held-out knowledge gain from
                # +0.14 to +0.05 F1 (same data, 100 questions).
                # Decoding on a CPU: a batch of 128 questions took 120 s where two of 64 took 150 s
                # (the LM head's matmul runs at a better rate on more rows); memory is no concern at 270M.
                "llm.local_batch_size": 128,
                # Adapters in every layer: with train.lora_layers 9 (top half) training was 1.38x faster
                # but held-out knowledge fell from +0.091 to +0.075 F1 (CI reaching below zero), the
                # skills from +0.53/+0.20 to +0.36/+0.19, and forgetting grew (perplexity ratio 11.6 ->
                # 19.7) on a 2-core AVX512-BF16 EPYC.
                "train.lora": True,
                "train.lora_rank": 32,
                "train.lora_alpha": 64,
                "train.learning_rate": 5e-4,
                # Three phase-1 epochs: same data, auto interpolation, training 9.1 minutes against 12.1
                # for four, and knowledge +0.110 against +0.120 F1 at W 0.6 (forgetting check 1.091).
                "train.phase1_epochs": 3,
                "train.phase2_epochs": 2,
                "train.batch_size": 8,
                "train.warmup_steps": 2,
                "train.max_seq_len": 1024,
                "train.max_batch_tokens": 4096,
                "train.holdout_fraction": 0.0,
                # Learning without forgetting (docs/results.md, benchmarks/forgetting_tradeoff.py, same
                # data): the base student's own text, 0.5 tokens per data token drawn anew each epoch,
                # anchored by KL(base || tuned) at weight 1 (no cross-entropy on it). At W = 1 the
                # forgetting check's perplexity ratio fell from 11.6x to 1.25x with the same knowledge
                # gain (+0.091 -> +0.090 F1) and better skills (+0.50/+0.19 -> +0.52/+0.20).
                "train.replay_ratio": 0.5,
                "train.replay_ce": False,
                "train.kl_weight": 1.0,
                # One continuation per opening: the pool (112 training texts) covers phase 1's four
                # epochs twice over, and the one-time generation takes half as long.
                "train.general_replay_samples": 1,
                # final/ part of the way from the base to the tuned weights (WiSE-FT), as far back as the
                # held-out replay text needs to stay within the forgetting check's 10% (its ratio tracked
                # the check within 0.006 at W = 1, 0.75 and 0.6). A fixed W fits one run: W = 0.6 gave
                # 1.097x on seed 42 but 1.111x on seed 1; auto chose 0.6 and 0.55 there, and seed 1 at
                # 0.55 measured 1.095x, knowledge +0.076 [+0.018, +0.131], skills +0.47/+0.22.
                "train.interpolation": "auto",
                # ...and within 1.08 on that text: with three epochs it read 1.093 at W 0.65 where the
                # forgetting check read 1.106 (at W 0.6: 1.091). The margin covers that gap.
                "train.interpolation_budget": 1.08,
                # train/final.gguf for llama.cpp / Ollama: 17 s for q8_0 (290 MB) on 2 cores.
                "train.export_gguf": "q8_0",
            },
            # No open-book ceiling here (`labalign evaluate open-book` gives it): on 2 cores it took about
            # 9 minutes (200 answers over three retrieved paragraphs each), and the pretrained 270M base
            # reads retrieved text badly (F1 0.055 open-book against 0.269 closed-book; docs/results.md).
            evals=KNOWLEDGE_EVALS,
            eval_max_tokens=96,
            eval_seeds=False,
        ),
        Profile(
            name="standard",
            summary="a real teacher (vLLM or any OpenAI-compatible server) and one GPU; hours",
            settings={
                "sdg.samples_per_leaf": 100,
                "train.lora": False,
                "train.phase1_epochs": 5,
                "train.phase2_epochs": 5,
                "train.learning_rate": 2e-5,
                "train.batch_size": 64,
                "train.warmup_steps": 25,
                "train.max_seq_len": 4096,
                "train.max_batch_tokens": 16384,
                "train.save_every": 200,
                # The quick profile's retention (general replay anchored by KL to the base), not yet
                # measured at this scale: the same code runs on GPUs, one process or many.
                "train.replay_ratio": 0.5,
                "train.replay_ce": False,
                "train.kl_weight": 1.0,
            },
            evals=(*KNOWLEDGE_EVALS, "open-book", "mt-bench"),
        ),
        Profile(
            name="full",
            summary="LAB scale: 1000 samples per leaf, InstructLab's phased schedule; a GPU server",
            settings={
                "sdg.samples_per_leaf": 1000,
                "train.lora": False,
                "train.phase1_epochs": 7,
                "train.phase2_epochs": 10,
                "train.learning_rate": 2e-5,
                "train.phase1_batch_size": 128,
                "train.phase2_batch_size": 3840,
                "train.warmup_steps": 25,
                "train.max_seq_len": 4096,
                "train.max_batch_tokens": 60000,
                "train.save_every": 500,
                "train.gradient_checkpointing": True,
                "train.replay_ratio": 0.5,
                "train.replay_ce": False,
                "train.kl_weight": 1.0,
            },
            evals=EVALUATIONS,
        ),
    )
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise LabalignError(
            f"unknown profile {name!r}", hint=f"choose one of: {', '.join(PROFILES)}"
        ) from None
