"""Settings of synthetic data generation (the `sdg:` section of labalign.yaml)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SDGSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    samples_per_leaf: int = Field(
        20, ge=1, description="Training samples to generate per leaf (honoured, not capped)."
    )
    seed: int = Field(42, description="Seed for example picks and sampling; same seed, same data.")
    judge: str | None = Field(None, description="Judge model spec; unset: the teacher judges its own output.")
    heldout_fraction: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="Extra generated questions per leaf kept out of training, for evaluation.",
    )
    replay_fraction: float = Field(
        0.5, ge=0.0, le=1.0, description="Share of phase-1 (knowledge) records replayed in phase 2."
    )
    system_prompt: str = Field(
        "", description="System message put first in every training record ('' for none)."
    )
    context_variants: bool = Field(
        True, description="Also train knowledge answers with the source chunk in the prompt."
    )
    document_records: bool = Field(
        True,
        description="Also train on every document chunk itself (as the answer about its section), not "
        "only on the teacher's questions about some chunks.",
    )
    document_pretraining: bool = Field(
        False,
        description="Also train on every document chunk as plain text, every token trained "
        "(InstructLab's pretraining records).",
    )
    fact_questions: bool = Field(
        True,
        description="Knowledge leaves: the teacher also writes a question for every sentence of the "
        "documents, answered by that sentence (faithful by construction; covers the whole document).",
    )
    knowledge_qa: bool = Field(
        True,
        description="Knowledge leaves: run LAB's Q&A pipeline (summaries, Q&A pairs, three judges). "
        "Off: knowledge data is the fact questions, documents and seeds only (the quick profile: a 270M "
        "teacher spent a third of the generation time there for 4 kept samples).",
    )
    oversample: float | None = Field(
        None,
        ge=1.0,
        le=20.0,
        description="Input rows per still-missing sample in each round (filters drop some; another round "
        "makes up what is still missing); unset: each pipeline's own (2.0 in the shipped ones).",
    )
    seed_records: bool = Field(
        False,
        description="Also train on each leaf's hand-written seed examples (then do not evaluate on the "
        "seed questions: they are no longer held out).",
    )
    teacher_format: Literal["auto", "chat", "completion"] = Field(
        "auto",
        description="How prompts reach the teacher: auto = chat for servers, completion for local models.",
    )
    dedup: Literal["auto", "rouge", "minhash"] = Field(
        "auto",
        description="Near-duplicate removal (ROUGE-L >= 0.7): rouge compares with every kept sample; "
        "minhash checks only MinHash LSH candidates (for large sets); auto: minhash from 1000 samples.",
    )
    max_chunks: int | None = Field(None, ge=1, description="Use at most this many chunks per knowledge leaf.")
