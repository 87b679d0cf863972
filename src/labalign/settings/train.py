"""Settings of the trainer: the `train:` section of labalign.yaml (LABALIGN_TRAIN__<KEY> in the environment).

Flat on purpose (per-phase overrides are `phase1_*` / `phase2_*` keys) so every setting is one flag, one
environment variable and one line of `labalign config init`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Strategy = Literal["phased", "stacked"]
Scheduler = Literal["constant", "cosine"]
LongSamples = Literal["drop", "truncate"]
Toggle = Literal["auto", "on", "off"]
Parallelism = Literal["auto", "ddp", "fsdp"]


class TrainSettings(BaseModel):
    """How the student is trained: data shaping, optimisation, precision, LoRA, checkpoints."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    strategy: Strategy = Field(
        "phased",
        description="phased: phase 1 (knowledge), then phase 2 (skills + replay) from phase 1's best "
        "checkpoint; stacked: all data in one phase.",
    )
    epochs: int = Field(
        2, ge=1, le=1000, description="Epochs per phase (unless phase1_epochs/phase2_epochs)."
    )
    phase1_epochs: int | None = Field(None, ge=1, le=1000, description="Epochs of phase 1; unset: epochs.")
    phase2_epochs: int | None = Field(None, ge=1, le=1000, description="Epochs of phase 2; unset: epochs.")
    learning_rate: float | None = Field(
        None, gt=0, lt=1, description="Peak learning rate; unset: 2e-5 for full fine-tuning, 2e-4 with LoRA."
    )
    phase1_learning_rate: float | None = Field(None, gt=0, lt=1, description="Phase 1 learning rate.")
    phase2_learning_rate: float | None = Field(None, gt=0, lt=1, description="Phase 2 learning rate.")
    batch_size: int = Field(
        32, ge=1, description="Effective batch size in samples per optimizer step (all processes together)."
    )
    phase1_batch_size: int | None = Field(None, ge=1, description="Phase 1 effective batch size.")
    phase2_batch_size: int | None = Field(None, ge=1, description="Phase 2 effective batch size.")
    warmup_steps: int = Field(10, ge=0, description="Linear warm-up steps, then constant (or cosine).")
    scheduler: Scheduler = Field("constant", description="After warm-up: constant or cosine decay to 0.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    seed: int = Field(42, ge=0, description="Seed of data order, held-out split, LoRA init and dropout.")
    max_seq_len: int = Field(2048, ge=8, description="Longest sample in tokens (longer: see long_samples).")
    long_samples: LongSamples = Field(
        "drop", description="Samples over max_seq_len: drop them, or truncate them (both are counted)."
    )
    max_batch_tokens: int = Field(
        4096,
        ge=8,
        description="Token budget of one packed micro-batch per process; at least max_seq_len. Lower it "
        "to save memory, raise it for speed.",
    )
    loss_chunk_tokens: int | None = Field(
        None,
        ge=1,
        description="Tokens per cross-entropy chunk; unset: about 256 MB of fp32 logits per chunk.",
    )
    holdout_fraction: float = Field(
        0.05,
        ge=0,
        lt=0.5,
        description="Fraction of each phase's data held out (deterministically) to pick the best checkpoint.",
    )
    save_every: int | None = Field(
        None, ge=1, description="Checkpoint (and evaluate) every N steps; always at each epoch's end."
    )
    keep_last: int = Field(2, ge=1, description="Step checkpoints kept per phase, besides the best.")
    lora: bool = Field(False, description="Train LoRA adapters instead of all weights.")
    lora_rank: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, gt=0, description="LoRA alpha (scale = alpha / rank).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    lora_target_modules: str = Field(
        "all-linear", description="Modules that get adapters: 'all-linear' or comma-separated names."
    )
    lora_layers: int | None = Field(
        None,
        ge=1,
        description="Adapters only in the top N decoder layers (backward then stops below them: faster); "
        "unset: all layers.",
    )
    merge_lora: bool = Field(
        True, description="Merge adapters into the saved checkpoints (plain HF models); false: save adapters."
    )
    interpolation: float | Literal["auto"] = Field(
        1.0,
        description="final/ = base + w * (tuned - base) (WiSE-FT): below 1 keeps most of what was learned "
        "with much less forgetting; 1: the tuned weights as they are; auto: the largest w whose held-out "
        "general text stays within interpolation_budget (else forgetting_budget, else 1.10), on a grid of "
        "0.05 from 1 down.",
    )
    replay_ratio: float = Field(
        0.0,
        ge=0,
        le=10,
        description="General replay mixed into each phase: replay tokens per token of the phase's own "
        "data (0: none). Needs replay data: a run writes the base student's own text; train --replay-data.",
    )
    replay_data: str | None = Field(
        None,
        description="Your own general data to replay (messages or pretraining JSONL, InstructLab's "
        "precomputed-skills role); unset: in `labalign run`, text written by the base student itself.",
    )
    general_replay_samples: int = Field(
        2,
        ge=1,
        le=64,
        description="Without replay_data, `labalign run` has the base student continue each of labalign's "
        "125 general openings this many times (sampled at temperature 1, cached per machine).",
    )
    general_replay_tokens: int = Field(
        160, ge=16, le=4096, description="Longest continuation of an opening, in tokens."
    )
    replay_ce: bool = Field(
        True, description="Train the replay text with cross-entropy (plain replay); off: KL anchor only."
    )
    kl_weight: float = Field(
        0.0,
        ge=0,
        le=100,
        description="Weight of KL(base || tuned) on the replay tokens: the tuned model's next-token "
        "distribution is anchored to the base's there (0: off; needs replay_ratio > 0).",
    )
    kl_top_k: int = Field(
        32,
        ge=1,
        le=1024,
        description="Base tokens per position kept for the KL anchor (the rest is one tail).",
    )
    general_validation: float = Field(
        0.1,
        ge=0,
        lt=0.5,
        description="Share of the replay text held out to measure each checkpoint's general-text "
        "perplexity against the base's (never trained on; not the forgetting check's text).",
    )
    forgetting_budget: float | None = Field(
        None,
        ge=1,
        description="Largest general-text perplexity ratio (tuned / base, on the held-out replay text) a "
        "checkpoint may have to be chosen as a phase's best; unset: no limit.",
    )
    interpolation_budget: float | None = Field(
        None,
        ge=1,
        description="interpolation auto: the largest held-out general-text perplexity ratio final/ may have; "
        "below the forgetting check's 1.10 it leaves a margin for the held-out text reading lower than the "
        "check does. Unset: forgetting_budget, else 1.10.",
    )
    export_gguf: Literal["f32", "f16", "bf16", "q8_0", "q4_k_m"] | None = Field(
        None,
        description="`labalign run` also writes train/final.gguf with these weights (llama.cpp, Ollama, "
        "LM Studio); unset: no GGUF. Done in the report stage: changing it never retrains.",
    )
    bf16: Toggle = Field(
        "auto", description="bf16 autocast: auto uses it where the CPU or GPU supports it natively."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in backward: less memory, about 30% more compute."
    )
    freeze_embeddings: bool = Field(
        True, description="Freeze input embeddings (and a tied LM head): large vocabularies train faster."
    )
    distributed: Parallelism = Field(
        "auto",
        description="Data parallelism over several processes: fsdp shards weights, gradients and optimizer "
        "state across them (FSDP2); ddp keeps a full copy in each; auto: fsdp on GPUs, ddp on CPU.",
    )
    attn_implementation: str | None = Field(
        None,
        description="Attention kernel; unset: flash_attention_2 on GPU when installed, else sdpa "
        "(on CPU one SDPA call per packed sample).",
    )

    @model_validator(mode="after")
    def _budget_fits_a_sample(self) -> TrainSettings:
        if self.max_batch_tokens < self.max_seq_len:
            raise ValueError(
                f"max_batch_tokens ({self.max_batch_tokens}) must be at least "
                f"max_seq_len ({self.max_seq_len})"
            )
        return self

    @model_validator(mode="after")
    def _interpolation_needs_weights(self) -> TrainSettings:
        if isinstance(self.interpolation, float) and not 0 < self.interpolation <= 1:
            raise ValueError(f"interpolation must be in (0, 1] or 'auto', got {self.interpolation}")
        if self.interpolation == "auto" and (self.general_validation <= 0 or self.replay_ratio <= 0):
            raise ValueError(
                "interpolation auto measures drift on held-out general replay text: set replay_ratio and "
                "general_validation above 0, or give interpolation a number"
            )
        if self.interpolation != 1 and self.lora and not self.merge_lora:
            raise ValueError("interpolation below 1 needs merged weights: set merge_lora, or interpolation 1")
        return self

    @model_validator(mode="after")
    def _replay_trains_something(self) -> TrainSettings:
        if self.kl_weight > 0 and self.replay_ratio == 0:
            raise ValueError("kl_weight anchors the replay tokens: set replay_ratio above 0 as well")
        if self.replay_ratio > 0 and not self.replay_ce and self.kl_weight == 0:
            raise ValueError("replay with neither replay_ce nor kl_weight trains nothing: turn one on")
        return self

    def phase_epochs(self, phase: int) -> int:
        return {1: self.phase1_epochs, 2: self.phase2_epochs}.get(phase) or self.epochs

    def phase_batch_size(self, phase: int) -> int:
        return {1: self.phase1_batch_size, 2: self.phase2_batch_size}.get(phase) or self.batch_size

    def phase_learning_rate(self, phase: int) -> float:
        explicit = {1: self.phase1_learning_rate, 2: self.phase2_learning_rate}.get(phase)
        if explicit is not None:
            return explicit
        if self.learning_rate is not None:
            return self.learning_rate
        return 2e-4 if self.lora else 2e-5
