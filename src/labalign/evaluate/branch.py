"""Branch evaluation: the tuned model and its base answer each leaf's held-out questions; answers are
scored against references (token F1, ROUGE-L) and, with a judge, rated 1-10; per-leaf and overall
deltas come with bootstrap confidence intervals and win/tie/loss counts."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from labalign.evaluate.judge import judge_prompt, parse_rating
from labalign.evaluate.questions import EvalQuestion
from labalign.evaluate.results import (
    BranchDeltas,
    BranchLeaf,
    BranchResult,
    BranchScore,
    BranchScores,
    Models,
    PairedDelta,
)
from labalign.evaluate.stats import paired_delta
from labalign.llm.types import Backend, GenerationParams, LLMRequest, LLMResult, Message
from labalign.progress import ProgressCallback
from labalign.textmetrics import rouge_l, token_f1, tokens

METRICS = ("f1", "rouge_l", "judge")
SOURCES = ("heldout", "generated", "seed")  # where a question came from


@dataclass
class Scored:
    """One model's answers to every question, with their scores (judge None when not rated)."""

    identity: str
    answers: list[str]
    f1: list[float]
    rouge_l: list[float]
    judge: list[float | None] = field(default_factory=list)
    errors: int = 0

    @property
    def judge_unparseable(self) -> int:
        return sum(1 for j in self.judge if j is None)


async def ask(
    backend: Backend,
    prompts: Sequence[str],
    max_tokens: int,
    system_prompt: str,
    on_progress: ProgressCallback | None,
    phase: str,
) -> tuple[list[str], int]:
    messages = [(Message("system", system_prompt),) if system_prompt else () for _ in prompts]
    requests = [
        # Greedy: evaluation answers must not depend on sampling luck.
        LLMRequest(
            messages=(*m, Message("user", p)),
            params=GenerationParams(temperature=0.0, max_tokens=max_tokens, seed=0),
            tag=phase,
        )
        for m, p in zip(messages, prompts, strict=True)
    ]
    done = 0

    def tick(_: LLMResult) -> None:
        nonlocal done
        done += 1
        if on_progress is not None:
            on_progress(phase, done, len(requests))

    results = await backend.generate(requests, on_result=tick)
    return [r.text.strip() for r in results], sum(1 for r in results if not r.ok)


async def score_model(
    backend: Backend,
    questions: Sequence[EvalQuestion],
    *,
    judge: Backend | None = None,
    max_tokens: int = 256,
    system_prompt: str = "",
    on_progress: ProgressCallback | None = None,
    label: str = "model",
) -> Scored:
    answers, errors = await ask(
        backend,
        [q.prompt() for q in questions],
        max_tokens,
        system_prompt,
        on_progress,
        f"{label}: answering",
    )
    scored = Scored(
        identity=backend.identity,
        answers=answers,
        f1=[token_f1(a, q.reference) for a, q in zip(answers, questions, strict=True)],
        rouge_l=[rouge_l(tokens(a), tokens(q.reference)) for a, q in zip(answers, questions, strict=True)],
        errors=errors,
    )
    if judge is not None:
        prompts = [judge_prompt(q.prompt(), q.reference, a) for q, a in zip(questions, answers, strict=True)]
        verdicts, _ = await ask(judge, prompts, 512, "", on_progress, f"{label}: judging")
        scored.judge = [parse_rating(v) for v in verdicts]
    return scored


def _summary(scored: Scored, index: Sequence[int]) -> BranchScores:
    def mean(metric: str) -> float:
        values = [getattr(scored, metric)[i] for i in index]
        return statistics.fmean(values) if values else 0.0

    out = BranchScores(n=len(index), f1=mean("f1"), rouge_l=mean("rouge_l"))
    if scored.judge:
        rated = [r for i in index if (r := scored.judge[i]) is not None]
        out.judge = statistics.fmean(rated) if rated else None
        out.judge_unparseable = len(index) - len(rated)
    return out


def _deltas(model: Scored, base: Scored, index: Sequence[int]) -> BranchDeltas:
    def delta(metric: str) -> PairedDelta:
        return paired_delta(
            [getattr(model, metric)[i] for i in index], [getattr(base, metric)[i] for i in index]
        ).result()

    out = BranchDeltas(f1=delta("f1"), rouge_l=delta("rouge_l"))
    if model.judge and base.judge:
        both = [i for i in index if model.judge[i] is not None and base.judge[i] is not None]
        out.judge = paired_delta(
            [model.judge[i] or 0.0 for i in both], [base.judge[i] or 0.0 for i in both], tie=0.5
        ).result()
    return out


def _score(model: Scored, base: Scored | None, index: Sequence[int]) -> dict[str, Any]:
    return {
        "model": _summary(model, index),
        "base": _summary(base, index) if base is not None else None,
        "delta": _deltas(model, base, index) if base is not None else None,
    }


def report(
    questions: Sequence[EvalQuestion], model: Scored, base: Scored | None, judge_identity: str | None
) -> BranchResult:
    """Per-leaf and overall scores for both models."""
    leaves: dict[str, list[int]] = {}
    for i, q in enumerate(questions):
        leaves.setdefault(q.leaf, []).append(i)
    return BranchResult(
        models=Models(model=model.identity, base=base.identity if base else None, judge=judge_identity),
        overall=BranchScore(**_score(model, base, range(len(questions)))),
        leaves=[
            BranchLeaf(
                leaf=name,
                kind=questions[index[0]].kind,
                sources={
                    s: sum(1 for i in index if questions[i].source == s)
                    for s in ("heldout", "generated", "seed")
                },
                **_score(model, base, index),
            )
            for name, index in leaves.items()
        ],
        errors={"model": model.errors, "base": base.errors if base else 0},
    )


def answer_records(
    questions: Sequence[EvalQuestion], model: Scored, base: Scored | None
) -> list[dict[str, Any]]:
    """One record per question with both answers and their scores (for inspection, not for stdout)."""
    out = []
    for i, q in enumerate(questions):
        rec: dict[str, Any] = {
            "leaf": q.leaf,
            "source": q.source,
            "question": q.question,
            "reference": q.reference,
            "model": {"answer": model.answers[i], "f1": model.f1[i], "rouge_l": model.rouge_l[i]},
        }
        if model.judge:
            rec["model"]["judge"] = model.judge[i]
        if base is not None:
            rec["base"] = {"answer": base.answers[i], "f1": base.f1[i], "rouge_l": base.rouge_l[i]}
            if base.judge:
                rec["base"]["judge"] = base.judge[i]
        out.append(rec)
    return out
