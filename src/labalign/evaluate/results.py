"""What each evaluation writes, as typed models: `<name>.json` in the eval folder holds a `*Result` (or a
`Skipped`), and `results.json` holds `EvalResults` (each evaluation's compact summary and the regressions).
The evaluations build these, the CLI tables, the report and `labalign run` read them; nothing passes
results as loose dicts.

Files are written without null fields (`dump`): a field that does not apply (no base model, no judge)
is absent, and absent reads back as None. Unknown fields are ignored, so a folder written by a newer
labalign still loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from labalign.errors import LabalignError, first_problem
from labalign.fileio import write_text_atomic
from labalign.redact import redact_data


class Result(BaseModel):
    model_config = ConfigDict(extra="ignore")

    def summary(self) -> Result:
        """The compact form kept in results.json: the whole result unless a kind trims it."""
        return self


R = TypeVar("R", bound=BaseModel)


def as_json(result: BaseModel) -> Any:
    """`result` as JSON data, without null fields; specs may be server URLs with credentials, which
    never leave the process (labalign.redact)."""
    return redact_data(result.model_dump(mode="json", exclude_none=True))


def save(path: Path, result: BaseModel) -> None:
    write_text_atomic(path, json.dumps(as_json(result), indent=2, ensure_ascii=False) + "\n")


def load(path: Path, kind: type[R]) -> R | None:
    """The result in `path` (None when there is no such file); a one-line LabalignError when it is not
    readable or not of that kind."""
    if not path.is_file():
        return None
    return _validate(path, kind, _read(path))


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (OSError, json.JSONDecodeError) as exc:
        raise LabalignError(
            f"cannot read evaluation results: {exc}", path=path, hint="re-run `labalign evaluate`"
        ) from exc


def _validate(path: Path, kind: type[R], raw: Any) -> R:
    try:
        return kind.model_validate(raw)
    except ValidationError as exc:
        raise LabalignError(
            f"unexpected evaluation results ({first_problem(exc)})",
            path=path,
            hint="re-run `labalign evaluate`",
        ) from exc


class Skipped(Result):
    """An evaluation that could not run here, and why."""

    skipped: str


class Models(Result):
    """Model identities (as the evaluation read them) or specs (as the user named them)."""

    model: str | None = None
    base: str | None = None
    judge: str | None = None


class PairedDelta(Result):
    """tuned - base over the same questions: mean, 95% bootstrap interval, wins/ties/losses."""

    mean: float
    ci_low: float
    ci_high: float
    wins: int
    ties: int
    losses: int
    significant: bool


# -- branch ----------------------------------------------------------------------------------------


class BranchScores(Result):
    n: int
    f1: float
    rouge_l: float
    judge: float | None = None
    judge_unparseable: int | None = None


class BranchDeltas(Result):
    f1: PairedDelta
    rouge_l: PairedDelta
    judge: PairedDelta | None = None


class BranchScore(Result):
    model: BranchScores
    base: BranchScores | None = None
    delta: BranchDeltas | None = None


class BranchLeaf(BranchScore):
    leaf: str
    kind: str
    sources: dict[str, int]


class BranchSummary(Result):
    models: Models
    overall: BranchScore
    leaves: int


class BranchResult(Result):
    models: Models
    overall: BranchScore
    leaves: list[BranchLeaf]
    errors: dict[str, int]
    specs: Models | None = None

    def summary(self) -> BranchSummary:
        return BranchSummary(models=self.models, overall=self.overall, leaves=len(self.leaves))


# -- MT-Bench --------------------------------------------------------------------------------------


class MtBenchBrief(Result):
    overall: float | None = None
    turn1: float | None = None
    turn2: float | None = None
    error_rate: float


class MtBenchScores(MtBenchBrief):
    categories: dict[str, float | None]
    judgments: int
    errors: int
    answer_errors: int


class MtBenchSummary(Result):
    models: Models
    judge: str
    model: MtBenchBrief
    base: MtBenchBrief | None = None
    delta: PairedDelta | None = None


class MtBenchResult(Result):
    models: Models
    judge: str
    data: str
    questions: int
    model: MtBenchScores
    base: MtBenchScores | None = None
    delta: PairedDelta | None = None
    specs: Models | None = None

    def summary(self) -> MtBenchSummary:
        def brief(scores: MtBenchScores | None) -> MtBenchBrief | None:
            return MtBenchBrief.model_validate(scores.model_dump()) if scores else None

        return MtBenchSummary(
            models=self.models, judge=self.judge, model=MtBenchBrief.model_validate(self.model.model_dump()),
            base=brief(self.base), delta=self.delta,
        )  # fmt: skip


# -- forgetting ------------------------------------------------------------------------------------


class Perplexities(Result):
    perplexity: float
    nll_per_token: float


class StylePerplexity(Result):
    model: float
    base: float


class ForgettingDocument(Result):
    id: str
    style: str
    title: str
    tokens: int
    model: float | None = None
    base: float | None = None


class ForgettingDataset(Result):
    source: str
    documents: int
    tokens: int


class ForgettingSummary(Result):
    models: Models
    model: Perplexities
    base: Perplexities
    ratio: float
    threshold: float
    flagged: bool
    mt_bench_delta: PairedDelta | Skipped | None = None


class ForgettingResult(ForgettingSummary):
    dataset: ForgettingDataset
    delta_nll_per_token: PairedDelta  # per document, tuned - base: positive means worse
    styles: dict[str, StylePerplexity]
    documents: list[ForgettingDocument]
    specs: Models | None = None
    dtype: str | None = None  # what the log-likelihoods were computed in (bfloat16, float32)

    def summary(self) -> ForgettingSummary:
        return ForgettingSummary.model_validate(self.model_dump(include=set(ForgettingSummary.model_fields)))


# -- general knowledge -----------------------------------------------------------------------------


class Accuracies(Result):
    """Accuracy of both models on the same multiple-choice items, with the paired interval."""

    n: int
    base: float
    tuned: float
    delta: float
    ci_low: float
    ci_high: float


class GeneralKnowledgeSummary(Accuracies):
    models: Models
    metric: str
    regression: bool  # the whole interval below zero


class SubjectAccuracy(Result):
    n: int
    base: float
    tuned: float


class GeneralKnowledgePick(Result):
    id: str
    answer: int
    base: int
    tuned: int


class GeneralKnowledgeDataset(Result):
    source: str
    questions: int


class GeneralKnowledgeResult(GeneralKnowledgeSummary):
    dataset: GeneralKnowledgeDataset
    gained: int
    lost: int
    subjects: dict[str, SubjectAccuracy]
    questions: list[GeneralKnowledgePick]
    specs: Models | None = None
    dtype: str | None = None  # what the log-likelihoods were computed in (bfloat16, float32)

    def summary(self) -> GeneralKnowledgeSummary:
        return GeneralKnowledgeSummary.model_validate(
            self.model_dump(include=set(GeneralKnowledgeSummary.model_fields))
        )


# -- MMLU-branch -----------------------------------------------------------------------------------


class LeafAccuracy(Result):
    n: int
    base: float
    tuned: float
    delta: float


class MmluBranchScore(Accuracies):
    gained: int
    lost: int


class MmluBranchSummary(Accuracies):
    models: Models
    metric: str
    chance: float
    significant: bool  # the whole interval above zero
    leaves: dict[str, LeafAccuracy]


class MmluBranchItem(Result):
    id: str
    leaf: str
    kind: str
    context: str
    choices: list[str]
    suffix: str
    answer: int
    source: str
    base_pick: int
    tuned_pick: int


class MmluBranchResult(MmluBranchScore):
    models: Models
    metric: str
    chance: float
    significant: bool
    leaves: dict[str, MmluBranchScore]
    items: list[MmluBranchItem]
    specs: Models | None = None
    dtype: str | None = None  # what the log-likelihoods were computed in (bfloat16, float32)

    def summary(self) -> MmluBranchSummary:
        kept = self.model_dump(include=set(MmluBranchSummary.model_fields) - {"leaves"})
        leaves = {leaf: LeafAccuracy.model_validate(v.model_dump()) for leaf, v in self.leaves.items()}
        return MmluBranchSummary.model_validate({**kept, "leaves": leaves})


# -- open book -------------------------------------------------------------------------------------


class OpenBookScore(Result):
    """Token F1 of each setting that ran (closed / open book, tuned / base) and retrieval recall."""

    n: int
    base_closed: float | None = None
    tuned_closed: float | None = None
    base_open: float | None = None
    tuned_open: float | None = None
    retrieval_recall: float


class OpenBookAnswer(Result):
    answer: str
    f1: float


class OpenBookQuestion(Result):
    leaf: str
    question: str
    reference: str
    passages: list[str]
    recall: bool
    base_closed: OpenBookAnswer | None = None
    tuned_closed: OpenBookAnswer | None = None
    base_open: OpenBookAnswer | None = None
    tuned_open: OpenBookAnswer | None = None


class OpenBookSummary(OpenBookScore):
    retriever: str
    k: int
    f1: float | None = None  # base open book: the ceiling retrieval alone reaches
    leaves: dict[str, OpenBookScore]


class OpenBookResult(OpenBookSummary):
    questions: list[OpenBookQuestion]
    specs: Models | None = None

    def summary(self) -> OpenBookSummary:
        return OpenBookSummary.model_validate(self.model_dump(include=set(OpenBookSummary.model_fields)))


# -- MMLU (lm-eval) --------------------------------------------------------------------------------


class LmEvalScores(Result):
    """One model's lm-eval run: `score` is the first task's accuracy, `results` every task's metrics."""

    model: str
    tasks: list[str]
    limit: int | None = None
    num_fewshot: int | None = None
    score: float | None = None
    score_stderr: float | None = None
    results: dict[str, dict[str, float]]
    groups: list[str] = []
    n: dict[str, int]
    lm_eval_version: str | None = None


class MmluSummary(Result):
    models: Models
    tasks: list[str]
    model: float | None = None
    base: float | None = None
    delta: float | None = None


class MmluResult(Result):
    models: Models
    specs: Models | None = None
    tasks: list[str]
    limit: int | None = None
    model: LmEvalScores
    base: LmEvalScores | None = None
    delta: float | None = None

    def summary(self) -> MmluSummary:
        return MmluSummary(
            models=self.models,
            tasks=self.tasks,
            model=self.model.score,
            base=self.base.score if self.base else None,
            delta=self.delta,
        )


# -- all -------------------------------------------------------------------------------------------


class Regression(Result):
    """Something that got worse beyond noise, with the figures behind it."""

    eval: str
    metric: str
    message: str
    base: float | None = None
    model: float | None = None
    ratio: float | None = None
    threshold: float | None = None
    delta: float | None = None
    ci: list[float] | None = None


class Evaluations(Result):
    """Each evaluation's summary, in the order they run; an evaluation not asked for is absent."""

    branch: BranchSummary | Skipped | None = None
    mt_bench: MtBenchSummary | Skipped | None = None
    forgetting: ForgettingSummary | Skipped | None = None
    general_knowledge: GeneralKnowledgeSummary | Skipped | None = None
    mmlu_branch: MmluBranchSummary | Skipped | None = None
    open_book: OpenBookSummary | Skipped | None = None
    mmlu: MmluSummary | Skipped | None = None

    def items(self) -> list[tuple[str, BaseModel]]:
        """(file stem, summary or Skipped) of each evaluation that was asked for."""
        return [
            (name, value) for name in type(self).model_fields if (value := getattr(self, name)) is not None
        ]


class EvalResults(Result):
    """results.json: what was compared, each evaluation's summary, and the regressions."""

    models: Models
    evaluations: Evaluations
    regressions: list[Regression]
    # Wall-clock seconds per evaluation (by result stem), so a slow stage can be traced to its part.
    seconds: dict[str, float] = Field(default_factory=dict)


# Each evaluation's result file (<stem>.json) and the model it holds.
RESULT_TYPES: dict[str, type[Result]] = {
    "branch": BranchResult,
    "mt_bench": MtBenchResult,
    "forgetting": ForgettingResult,
    "general_knowledge": GeneralKnowledgeResult,
    "mmlu_branch": MmluBranchResult,
    "open_book": OpenBookResult,
    "mmlu": MmluResult,
}


def load_result(eval_dir: Path, stem: str) -> Result | None:
    """`<stem>.json` in `eval_dir` as its result model, or Skipped, or None when it is not there."""
    path = eval_dir / f"{stem}.json"
    if not path.is_file():
        return None
    raw = _read(path)
    kind: type[Result] = Skipped if isinstance(raw, dict) and "skipped" in raw else RESULT_TYPES[stem]
    return _validate(path, kind, raw)
