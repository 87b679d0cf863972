"""MMLU (or any lm-evaluation-harness task) on a model, through lm-eval's own task definitions.

In-process, lm-eval's HFLM runs the model's weights (a Hugging Face directory; 'default' and .gguf
files are converted once). A URL runs lm-eval's `local-completions` client: multiple-choice tasks score
each answer by its log-likelihood, which needs a *completions* endpoint that echoes prompt log-probs
(vLLM's server does; labalign's own `serve` and every chat-completions endpoint do not, so MMLU cannot
be measured through them).

Nothing is downloaded: the run is forced offline (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE), and a task
whose dataset is not in the local Hugging Face cache is reported as unavailable, with how to get it.
lm-eval caches every log-likelihood it computes (SQLite, per model) under the labalign cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import math
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from labalign.errors import LabalignError
from labalign.evaluate.results import LmEvalScores
from labalign.evaluate.unavailable import EvalUnavailable
from labalign.progress import ProgressCallback

DEFAULT_TASKS = ("mmlu",)
PROGRESS_CHUNK = 256  # requests per progress update; lm-eval still batches and sorts inside each chunk
GET_DATA_HINT = (
    "on a machine with network access run `huggingface-cli download cais/mmlu --repo-type dataset` and copy "
    "~/.cache/huggingface to this machine, or give --mmlu-tasks-dir DIR with lm-eval task YAMLs that read "
    "local files"
)


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Hub access off for the duration: the environment for libraries imported inside, and the flags of
    `datasets` / `huggingface_hub` that were read at their import, if they are loaded already."""
    names = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
    saved_env = {n: os.environ.get(n) for n in names}
    patched: list[tuple[Any, str, Any]] = []
    for module_name, attrs in (
        ("datasets.config", names),
        ("huggingface_hub.constants", ("HF_HUB_OFFLINE",)),
    ):
        module = sys.modules.get(module_name)
        for attr in attrs:
            if module is not None and hasattr(module, attr):
                patched.append((module, attr, getattr(module, attr)))
                setattr(module, attr, True)
    os.environ.update(dict.fromkeys(names, "1"))
    try:
        yield
    finally:
        for module, attr, value in patched:
            setattr(module, attr, value)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """For the duration: no tqdm bars from lm-eval, datasets or transformers (labalign draws its own; the
    env switch TQDM_DISABLE is read only at import), and no `git describe` from lm-eval, which leaks
    "fatal: not a git repository" and describes the caller's folder, not the evaluation."""
    import lm_eval.evaluator  # type: ignore[import-untyped]

    tqdm: Any = importlib.import_module("tqdm")  # typed Any: whether its stubs are installed varies

    original_init = tqdm.tqdm.__init__

    def silent_init(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        original_init(self, *args, **kwargs)

    original_git = getattr(lm_eval.evaluator, "get_git_commit_hash", None)
    tqdm.tqdm.__init__ = silent_init
    if original_git is not None:
        lm_eval.evaluator.get_git_commit_hash = lambda: None
    try:
        yield
    finally:
        tqdm.tqdm.__init__ = original_init
        if original_git is not None:
            lm_eval.evaluator.get_git_commit_hash = original_git


def _task_manager(tasks: Sequence[str], include_path: Path | None) -> Any:
    """lm-eval's task index; only the include path when it defines every task (indexing lm-eval's
    thousands of built-in tasks takes seconds)."""
    from lm_eval.tasks import TaskManager  # type: ignore[import-untyped]

    if include_path is not None:
        if not include_path.is_dir():
            raise LabalignError("not a folder of lm-eval task YAMLs", path=include_path)
        local = TaskManager(include_path=str(include_path), include_defaults=False)
        if all(t in local.all_tasks for t in tasks):
            return local
    manager = TaskManager(include_path=str(include_path) if include_path else None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise LabalignError(
            f"unknown lm-eval task {', '.join(unknown)}",
            path=include_path,
            hint="use lm-eval task or group names (`lm-eval ls tasks`), or define them in --mmlu-tasks-dir",
        )
    return manager


def _is_unreachable(exc: BaseException) -> bool:
    """Whether a dataset load failed for want of the network or a local copy (not a broken task)."""
    seen: BaseException | None = exc
    while seen is not None:
        name = type(seen).__name__
        text = str(seen).lower()
        if (
            isinstance(seen, ConnectionError | FileNotFoundError)
            or name in ("OfflineModeIsEnabled", "DatasetNotFoundError", "LocalEntryNotFoundError")
            or "offline" in text
            or "couldn't reach" in text
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def check_tasks(manager: Any, tasks: Sequence[str]) -> None:
    """Build the tasks (which loads their datasets) before any model is loaded: EvalUnavailable when a
    dataset is not available offline."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            if hasattr(manager, "load"):
                manager.load(list(tasks))
            else:  # lm-eval < 0.4.10
                from lm_eval.tasks import get_task_dict

                get_task_dict(list(tasks), manager)
    except Exception as exc:  # lm-eval and datasets raise many kinds; classify rather than list them
        if _is_unreachable(exc):
            raise EvalUnavailable(
                f"the dataset of lm-eval task {', '.join(tasks)} is not in the local Hugging Face cache, "
                "and labalign does not download datasets",
                hint=GET_DATA_HINT,
            ) from exc
        raise LabalignError(f"lm-eval could not build task {', '.join(tasks)}: {exc}") from exc


def _with_progress(lm: Any, on_progress: ProgressCallback | None, phase: str) -> Any:
    """Route the model's log-likelihood calls through chunks that report progress (lm-eval's own tqdm
    bars are turned off). Set on the instance, so lm-eval's caching wrapper calls it too."""
    inner = lm.loglikelihood

    def loglikelihood(requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        out: list[tuple[float, bool]] = []
        for start in range(0, len(requests), PROGRESS_CHUNK):
            out += inner(requests[start : start + PROGRESS_CHUNK], disable_tqdm=True)
            if on_progress is not None:
                on_progress(phase, len(out), len(requests))
        return out

    lm.loglikelihood = loglikelihood
    return lm


def _url_model(url: str, settings: Any, tokenizer: Path | None) -> Any:
    from lm_eval.models.openai_completions import LocalCompletionsAPI  # type: ignore[import-untyped]

    base = url.rstrip("/")
    name = settings.model_name or _first_model(base)
    kwargs: dict[str, Any] = {
        "base_url": f"{base}/completions",
        "model": name,
        "num_concurrent": min(settings.max_concurrency, 16),
        "max_retries": settings.max_attempts,
        "timeout": int(settings.request_timeout_s),
    }
    # Log-likelihoods need the server's token boundaries: a local copy of its tokenizer, or the server's
    # /tokenize endpoint (vLLM has one). A hub name would be a download.
    if tokenizer is not None:
        kwargs.update(tokenizer_backend="huggingface", tokenizer=str(tokenizer))
    else:
        kwargs.update(tokenizer_backend="remote")
    return LocalCompletionsAPI(**kwargs)


def _first_model(base_url: str) -> str:
    import httpx

    try:
        response = httpx.get(f"{base_url}/models", timeout=10.0)
        response.raise_for_status()
        return str(response.json()["data"][0]["id"])
    except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
        raise LabalignError(
            f"cannot list the models of {base_url}: {exc}", hint="set llm.model_name in the settings"
        ) from exc


def _metrics(values: dict[str, Any]) -> dict[str, float]:
    """{'acc,none': 0.5, 'acc_stderr,none': 0.1, 'alias': ...} -> {'acc': 0.5, 'acc_stderr': 0.1}."""
    out: dict[str, float] = {}
    for key, value in values.items():
        if "," not in key or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        metric, filt = key.split(",", 1)
        if not math.isnan(value):
            out[metric if filt == "none" else f"{metric} ({filt})"] = float(value)
    return out


def evaluate(
    model: str,
    *,
    cache_dir: Path,
    llm_settings: Any,
    tasks: Sequence[str] = DEFAULT_TASKS,
    include_path: Path | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    tokenizer: Path | None = None,
    on_progress: ProgressCallback | None = None,
    label: str = "model",
) -> tuple[LmEvalScores, dict[str, list[dict[str, Any]]]]:
    """Run lm-eval `tasks` on `model` (a model spec). Returns the scores (`results`: {task: {metric:
    value}}, `n`: {task: count}) and lm-eval's per-sample records.

    EvalUnavailable when a task's dataset is not available offline; LabalignError for unknown tasks."""
    from labalign.evaluate.models import is_url, weights_dir

    if not tasks:
        raise LabalignError("no lm-eval tasks given")
    with offline(), _quiet():
        if on_progress is not None:
            on_progress(f"{label}: lm-eval tasks", 0, 1)
        manager = _task_manager(tasks, include_path)
        check_tasks(manager, tasks)
        if on_progress is not None:
            on_progress(f"{label}: lm-eval tasks", 1, 1)
        if is_url(model):
            lm = _url_model(model, llm_settings, tokenizer)
            identity = f"url:{model}:{lm.model}"
        else:
            from lm_eval.models.huggingface import HFLM  # type: ignore[import-untyped]

            from labalign.llm.hf import model_dir_identity, pick_device, pick_dtype

            path = weights_dir(model, cache_dir)
            device = pick_device(None)
            lm = HFLM(
                pretrained=str(path),
                device=device,
                dtype=pick_dtype(device, None),
                batch_size=batch_size,
                trust_remote_code=False,
            )
            identity = model_dir_identity(path)
        _with_progress(lm, on_progress, f"{label}: lm-eval log-likelihoods")
        from lm_eval import simple_evaluate

        store = cache_dir / "eval" / "lm-eval" / hashlib.sha256(identity.encode()).hexdigest()[:24]
        store.parent.mkdir(parents=True, exist_ok=True)
        try:
            results = simple_evaluate(
                model=lm,
                tasks=list(tasks),
                task_manager=manager,
                num_fewshot=num_fewshot,
                limit=limit,
                use_cache=str(store),
                log_samples=True,
                bootstrap_iters=1000,
            )
        except Exception as exc:  # same classification as the preflight: a dataset may load lazily
            if _is_unreachable(exc):
                raise EvalUnavailable(
                    f"lm-eval could not reach the data of {', '.join(tasks)} offline", hint=GET_DATA_HINT
                ) from exc
            raise
    if results is None:  # only on non-zero ranks of a distributed run
        raise LabalignError("lm-eval returned no results")
    per_task = {name: _metrics(values) for name, values in results["results"].items()}
    counts: dict[str, int] = {}
    for name, v in results.get("n-samples", {}).items():
        counts[name] = int(v.get("effective") or v.get("original") or 0) if isinstance(v, dict) else int(v)
    first = per_task.get(tasks[0], {})
    summary = LmEvalScores(
        model=identity,
        tasks=list(tasks),
        limit=limit,
        num_fewshot=num_fewshot,
        score=first.get("acc"),
        score_stderr=first.get("acc_stderr"),
        results=per_task,
        groups=sorted(results.get("groups", {})),
        n=counts,
        lm_eval_version=results.get("lm_eval_version"),
    )
    samples: dict[str, list[dict[str, Any]]] = results.get("samples", {})
    return summary, samples
