"""Charts for the report (PNG, matplotlib's headless Agg backend): per-leaf before/after bars, score
distributions, MT-Bench per category, forgetting perplexities, lm-eval accuracies."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # the backend must be chosen before pyplot loads

if TYPE_CHECKING:
    from labalign.evaluate.branch import Scored
    from labalign.evaluate.results import (
        BranchResult,
        ForgettingResult,
        MmluResult,
        MtBenchResult,
        OpenBookResult,
    )

BASE_COLOR = "#9aa5b1"
TUNED_COLOR = "#2f7ed8"


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _paired_barh(ax: Any, names: list[str], tuned: list[float], base: list[float] | None, title: str) -> None:
    y = range(len(names))
    if base is not None:
        ax.barh([i + 0.2 for i in y], base, height=0.4, label="base", color=BASE_COLOR)
    ax.barh([i - 0.2 for i in y], tuned, height=0.4, label="tuned", color=TUNED_COLOR)
    ax.set_yticks(list(y), names)
    ax.invert_yaxis()
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)


def branch_chart(result: BranchResult, path: Path) -> Path:
    """Per-leaf base vs tuned scores, one panel per metric that was measured."""
    leaves = result.leaves
    metrics = [m for m in ("f1", "rouge_l", "judge") if leaves and getattr(leaves[0].model, m) is not None]
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(4.5 * len(metrics), 0.6 * len(leaves) + 2.2), squeeze=False
    )
    names = [leaf.leaf.rsplit("/", 1)[-1] for leaf in leaves]
    titles = {"f1": "token F1", "rouge_l": "ROUGE-L", "judge": "judge (1-10)"}
    for ax, metric in zip(axes[0], metrics, strict=True):
        tuned = [getattr(leaf.model, metric) or 0.0 for leaf in leaves]
        base = None
        if leaves[0].base is not None:
            base = [getattr(leaf.base, metric) or 0.0 if leaf.base else 0.0 for leaf in leaves]
        _paired_barh(ax, names, tuned, base, titles[metric])
    axes[0][0].legend(loc="lower right")
    return _save(fig, path)


def branch_distribution(tuned: Scored, base: Scored | None, path: Path) -> Path:
    """Histograms of per-question scores (token F1, and judge ratings when rated), base over tuned."""
    panels: list[tuple[str, list[float], list[float] | None, tuple[float, float]]] = [
        ("token F1 per question", tuned.f1, base.f1 if base else None, (0.0, 1.0))
    ]
    rated = [v for v in tuned.judge if v is not None]
    if rated:
        base_rated = [v for v in base.judge if v is not None] if base and base.judge else None
        panels.append(("judge rating per question", rated, base_rated, (1.0, 10.0)))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.2), squeeze=False)
    for ax, (title, t, b, (low, high)) in zip(axes[0], panels, strict=True):
        bins = [low + (high - low) * i / 10 for i in range(11)]
        if b is not None:
            ax.hist(b, bins=bins, alpha=0.6, label="base", color=BASE_COLOR)
        ax.hist(t, bins=bins, alpha=0.6, label="tuned", color=TUNED_COLOR)
        ax.set_title(title)
        ax.set_ylabel("questions")
        ax.legend()
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def mt_bench_chart(result: MtBenchResult, path: Path) -> Path:
    """Mean judge rating per MT-Bench category, and per turn, base vs tuned."""
    cats = list(result.model.categories)
    tuned = [result.model.categories[c] or 0.0 for c in cats]
    base = [result.base.categories.get(c) or 0.0 for c in cats] if result.base else None
    fig, axes = plt.subplots(
        1, 2, figsize=(9.5, 0.45 * len(cats) + 2.2), gridspec_kw={"width_ratios": [3, 2]}, squeeze=False
    )
    _paired_barh(axes[0][0], cats, tuned, base, "rating by category (1-10)")
    turns = ["overall", "turn1", "turn2"]
    _paired_barh(
        axes[0][1],
        ["overall", "turn 1", "turn 2"],
        [getattr(result.model, k) or 0.0 for k in turns],
        [getattr(result.base, k) or 0.0 for k in turns] if result.base else None,
        "rating by turn",
    )
    for ax in axes[0]:
        ax.set_xlim(0, 10)
    axes[0][0].legend(loc="lower right")
    return _save(fig, path)


def forgetting_chart(result: ForgettingResult, path: Path) -> Path:
    """General-text perplexity per text style and overall, base vs tuned (lower is better)."""
    styles = list(result.styles.values())
    names = [*result.styles, "all"]
    tuned = [s.model for s in styles] + [result.model.perplexity]
    base = [s.base for s in styles] + [result.base.perplexity]
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(names) + 1.8))
    _paired_barh(ax, names, tuned, base, "perplexity on general text (lower is better)")
    if max(tuned + base) > 10 * min(tuned + base):
        ax.set_xscale("log")  # a badly damaged model is orders of magnitude off: keep the base visible
    ax.legend(loc="lower right")
    return _save(fig, path)


def mmlu_chart(result: MmluResult, path: Path) -> Path:
    """Accuracy per lm-eval task, base vs tuned: the requested tasks, then their groups (MMLU's four
    categories), then subtasks, at most 12 bars."""
    tuned_all = result.model.results
    groups = set(result.model.groups)
    names = [n for n, m in tuned_all.items() if "acc" in m]
    names = sorted(names, key=lambda n: (n not in result.tasks, n not in groups, n))[:12]
    tuned = [tuned_all[n]["acc"] for n in names]
    base = None
    if result.base:
        base = [result.base.results.get(n, {}).get("acc", 0.0) for n in names]
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(names) + 1.8))
    _paired_barh(ax, names, tuned, base, "accuracy")
    ax.set_xlim(0, 1)
    ax.legend(loc="lower right")
    return _save(fig, path)


def open_book_chart(result: OpenBookResult, path: Path) -> Path:
    """Token F1 on the held-out knowledge questions: closed book and open book, base and tuned, the
    "fine-tune or retrieve?" picture in one panel."""
    settings = [
        (key, label)
        for key, label in (
            ("base_closed", "base, closed book"),
            ("tuned_closed", "tuned, closed book"),
            ("base_open", "base, open book (retrieval)"),
            ("tuned_open", "tuned, open book"),
        )
        if getattr(result, key) is not None
    ]
    fig, ax = plt.subplots(figsize=(6.5, 0.55 * len(settings) + 1.6))
    colors = [TUNED_COLOR if key.startswith("tuned") else BASE_COLOR for key, _ in settings]
    hatches = ["//" if key.endswith("open") else "" for key, _ in settings]
    values = [float(getattr(result, key)) for key, _ in settings]
    bars = ax.barh(range(len(settings)), values, color=colors, height=0.6)
    for bar, hatch, value in zip(bars, hatches, values, strict=True):
        bar.set_hatch(hatch)
        ax.text(value + 0.005, bar.get_y() + bar.get_height() / 2, f"{value:.3f}", va="center", fontsize=9)
    ax.set_yticks(range(len(settings)), [label for _, label in settings])
    ax.invert_yaxis()
    ax.set_xlim(0, max(1e-3, *values) * 1.2)
    ax.set_xlabel(f"token F1, {result.n} held-out knowledge questions")
    ax.set_title(f"closed book vs open book ({result.retriever})")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)
