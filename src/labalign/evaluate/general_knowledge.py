"""General knowledge kept: multiple-choice questions scored by the log-likelihood of each option.

Forgetting as users feel it is not only perplexity: a tuned model that still writes fluent text may
have lost facts it knew. `data/general_knowledge.jsonl` holds 205 everyday-knowledge questions written
for labalign (geography, science, history, language, arts, animals, maths...; none about any example
taxonomy). Each option is scored as the continuation of "Question: ...\\nAnswer:", the way
lm-evaluation-harness scores ARC and HellaSwag, and the option with the highest log-likelihood per
byte wins (its `acc_norm`: longer options are not penalised for their length). This needs no chat
ability, so a pretrained base is scored as fairly as a chat model; a 270M pretrained model answers
many of these, which is the point: the check sees what tuning takes away.

Base and tuned are compared question by question (paired bootstrap); an interval entirely below zero
is a regression. The base's scores are cached per machine, as its perplexity is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from labalign.errors import LabalignError
from labalign.evaluate.loglik import pick_per_byte, score_continuations, score_continuations_cached
from labalign.evaluate.results import (
    GeneralKnowledgeDataset,
    GeneralKnowledgePick,
    GeneralKnowledgeResult,
    Models,
    SubjectAccuracy,
)
from labalign.evaluate.stats import paired_delta
from labalign.jsonl import iter_jsonl
from labalign.progress import ProgressCallback

PROMPT = "Question: {question}\nAnswer:"


@dataclass(frozen=True)
class Question:
    id: str
    subject: str
    question: str
    choices: tuple[str, ...]
    answer: int


@dataclass
class Scores:
    """One model's log-likelihood of every option of every question (nats, summed over its tokens)."""

    identity: str
    loglik: list[list[float]]

    def picks(self, questions: Sequence[Question]) -> list[int]:
        """The chosen option per question: highest log-likelihood per byte of the option's text."""
        pairs = zip(questions, self.loglik, strict=True)
        return [pick_per_byte(lls, [" " + c for c in q.choices]) for q, lls in pairs]

    def correct(self, questions: Sequence[Question]) -> list[float]:
        return [float(p == q.answer) for p, q in zip(self.picks(questions), questions, strict=True)]


def default_path() -> Path:
    return Path(str(resources.files("labalign.evaluate") / "data" / "general_knowledge.jsonl"))


def load_questions(path: Path | None = None) -> list[Question]:
    source = path or default_path()
    hint = 'each line is {"id", "question", "choices": [...], "answer": index of the right choice}'
    out: list[Question] = []
    for line, rec in iter_jsonl(source, hint=hint):
        choices = rec.get("choices") if isinstance(rec, dict) else None
        answer = rec.get("answer") if isinstance(rec, dict) else None
        if (
            not isinstance(rec, dict)
            or not isinstance(rec.get("question"), str)
            or not isinstance(choices, list)
            or len(choices) < 2
            or not all(isinstance(c, str) and c.strip() for c in choices)
            or not isinstance(answer, int)
            or not 0 <= answer < len(choices)
        ):
            raise LabalignError("not a multiple-choice question", path=source, line=line, hint=hint)
        out.append(
            Question(
                str(rec.get("id", f"line-{line}")),
                str(rec.get("subject", "")),
                rec["question"],
                tuple(choices),
                answer,
            )
        )
    if not out:
        raise LabalignError("no questions", path=source, hint=hint)
    return out


def _items(questions: Sequence[Question]) -> list[tuple[str, list[str]]]:
    """Each question as a context and its options as continuations (" option")."""
    return [(PROMPT.format(question=q.question), [" " + c.strip() for c in q.choices]) for q in questions]


def score(
    model_dir: Path,
    questions: Sequence[Question],
    *,
    batch_size: int = 32,
    on_progress: ProgressCallback | None = None,
    label: str = "model",
    dtype: str = "auto",
) -> Scores:
    """Log-likelihood of each option given its question, in-process and batched (right padding)."""
    identity, loglik = score_continuations(
        model_dir,
        _items(questions),
        batch_size=batch_size,
        on_progress=on_progress,
        phase=f"{label}: general knowledge",
        dtype=dtype,
    )
    return Scores(identity, loglik)


def score_cached(
    model_dir: Path,
    questions: Sequence[Question],
    cache_dir: Path | None,
    *,
    on_progress: ProgressCallback | None = None,
    label: str = "model",
    dtype: str = "auto",
) -> Scores:
    """`score`, remembered per (weights, questions, dtype) in `cache_dir`."""
    identity, loglik = score_continuations_cached(
        model_dir,
        _items(questions),
        cache_dir,
        on_progress=on_progress,
        phase=f"{label}: general knowledge",
        dtype=dtype,
    )
    return Scores(identity, loglik)


def compare(
    questions: Sequence[Question], tuned: Scores, base: Scores, *, source: str = ""
) -> GeneralKnowledgeResult:
    """Accuracy of both, the paired delta with its 95% interval, per subject, and the regression flag."""
    t, b = tuned.correct(questions), base.correct(questions)
    delta = paired_delta(t, b, tie=0.5)
    subjects: dict[str, SubjectAccuracy] = {}
    for subject in sorted({q.subject for q in questions}):
        index = [i for i, q in enumerate(questions) if q.subject == subject]
        subjects[subject] = SubjectAccuracy(
            n=len(index),
            base=sum(b[i] for i in index) / len(index),
            tuned=sum(t[i] for i in index) / len(index),
        )
    picks_t, picks_b = tuned.picks(questions), base.picks(questions)
    return GeneralKnowledgeResult(
        dataset=GeneralKnowledgeDataset(source=source, questions=len(questions)),
        models=Models(model=tuned.identity, base=base.identity),
        metric="accuracy (log-likelihood per byte of each option, lm-eval's acc_norm)",
        n=len(questions),
        base=sum(b) / len(b),
        tuned=sum(t) / len(t),
        delta=delta.mean,
        ci_low=delta.low,
        ci_high=delta.high,
        gained=delta.wins,
        lost=delta.losses,
        regression=delta.high < 0,
        subjects=subjects,
        questions=[
            GeneralKnowledgePick(id=q.id, answer=q.answer, base=picks_b[i], tuned=picks_t[i])
            for i, q in enumerate(questions)
        ],
    )
