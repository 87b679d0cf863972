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

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from labalign.errors import LabalignError
from labalign.evaluate.stats import paired_delta
from labalign.jsonl import iter_jsonl

PROMPT = "Question: {question}\nAnswer:"
ProgressCallback = Callable[[str, int, int], None]


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
        out = []
        for q, lls in zip(questions, self.loglik, strict=True):
            norm = [ll / max(1, len((" " + c).encode())) for ll, c in zip(lls, q.choices, strict=True)]
            out.append(max(range(len(norm)), key=norm.__getitem__))
        return out

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


def score(
    model_dir: Path,
    questions: Sequence[Question],
    *,
    batch_size: int = 16,
    on_progress: ProgressCallback | None = None,
    label: str = "model",
) -> Scores:
    """Log-likelihood of each option given its question, in-process and batched (right padding)."""
    import torch

    from labalign.evaluate.forgetting import load_scoring_model, right_padded_hidden
    from labalign.train.loss import _logits

    model, tokenizer, spec, identity = load_scoring_model(model_dir)
    device = spec.weight.device
    rows: list[tuple[int, int, list[int], int]] = []  # (question, option, ids, where the option starts)
    for qi, q in enumerate(questions):
        context = list(tokenizer(PROMPT.format(question=q.question), add_special_tokens=True)["input_ids"])
        for ci, choice in enumerate(q.choices):
            option = list(tokenizer(" " + choice.strip(), add_special_tokens=False)["input_ids"])
            rows.append((qi, ci, context + option, len(context)))
    loglik = [[0.0] * len(q.choices) for q in questions]
    order = sorted(range(len(rows)), key=lambda r: -len(rows[r][2]))  # longest first: little padding
    phase = f"{label}: general knowledge"
    decoder = model.get_decoder()
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = [rows[r] for r in order[start : start + batch_size]]
            _, hidden = right_padded_hidden(decoder, [seq for _, _, seq, _ in batch], device)
            # Only the positions that predict an option's tokens go through the head, all of the batch's
            # in one matmul (a few tokens per option: a chunk per option would pad each to 64 rows).
            where = [
                (j, p) for j, (_, _, seq, begin) in enumerate(batch) for p in range(begin - 1, len(seq) - 1)
            ]
            index = torch.tensor(where, dtype=torch.long, device=device)
            logits, _ = _logits(hidden[index[:, 0], index[:, 1]], spec.weight, spec)
            follow = torch.tensor([batch[j][2][p + 1] for j, p in where], device=device)
            token_ll = torch.log_softmax(logits.float(), -1).gather(1, follow[:, None]).squeeze(1)
            sums = torch.zeros(len(batch), dtype=torch.float64, device=device)
            sums.index_add_(0, index[:, 0], token_ll.double())
            for j, (qi, ci, _, _) in enumerate(batch):
                loglik[qi][ci] = float(sums[j])
            if on_progress is not None:
                on_progress(phase, min(start + batch_size, len(order)), len(order))
    del model
    return Scores(identity, loglik)


def score_cached(
    model_dir: Path,
    questions: Sequence[Question],
    cache_dir: Path | None,
    *,
    on_progress: ProgressCallback | None = None,
    label: str = "model",
) -> Scores:
    """`score`, remembered per (weights, questions) in `cache_dir`."""
    from labalign.llm.hf import model_dir_identity

    key = json.dumps(
        {"model": model_dir_identity(model_dir), "questions": [asdict(q) for q in questions], "v": PROMPT},
        sort_keys=True,
    )
    path = cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json" if cache_dir else None
    if path is not None and path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        if on_progress is not None:
            on_progress(f"{label}: general knowledge (cached)", 1, 1)
        return Scores(data["identity"], data["loglik"])
    result = score(model_dir, questions, on_progress=on_progress, label=label)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(result)), encoding="utf-8")
        tmp.replace(path)
    return result


def compare(
    questions: Sequence[Question], tuned: Scores, base: Scores, *, source: str = ""
) -> dict[str, Any]:
    """Accuracy of both, the paired delta with its 95% interval, per subject, and the regression flag."""
    t, b = tuned.correct(questions), base.correct(questions)
    delta = paired_delta(t, b, tie=0.5)
    subjects: dict[str, dict[str, float | int]] = {}
    for subject in sorted({q.subject for q in questions}):
        index = [i for i, q in enumerate(questions) if q.subject == subject]
        subjects[subject] = {
            "n": len(index),
            "base": sum(b[i] for i in index) / len(index),
            "tuned": sum(t[i] for i in index) / len(index),
        }
    picks_t, picks_b = tuned.picks(questions), base.picks(questions)
    return {
        "dataset": {"source": source, "questions": len(questions)},
        "models": {"model": tuned.identity, "base": base.identity},
        "metric": "accuracy (log-likelihood per byte of each option, lm-eval's acc_norm)",
        "n": len(questions),
        "base": sum(b) / len(b),
        "tuned": sum(t) / len(t),
        "delta": delta.mean,
        "ci_low": delta.low,
        "ci_high": delta.high,
        "gained": delta.wins,
        "lost": delta.losses,
        "regression": delta.high < 0,
        "subjects": subjects,
        "questions": [
            {"id": q.id, "answer": q.answer, "base": picks_b[i], "tuned": picks_t[i]}
            for i, q in enumerate(questions)
        ],
    }
