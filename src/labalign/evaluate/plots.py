"""Before/after bar charts for the report (PNG, matplotlib's headless Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # the backend must be chosen before pyplot loads


def branch_chart(result: dict[str, Any], path: Path) -> Path:
    """Per-leaf base vs tuned scores, one panel per metric that was measured."""
    leaves = result["leaves"]
    metrics = [m for m in ("f1", "rouge_l", "judge") if leaves and leaves[0]["model"].get(m) is not None]
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(4.5 * len(metrics), 0.6 * len(leaves) + 2.2), squeeze=False
    )
    names = [leaf["leaf"].rsplit("/", 1)[-1] for leaf in leaves]
    for ax, metric in zip(axes[0], metrics, strict=True):
        y = range(len(leaves))
        tuned = [leaf["model"].get(metric) or 0.0 for leaf in leaves]
        if "base" in leaves[0]:
            base = [leaf["base"].get(metric) or 0.0 for leaf in leaves]
            ax.barh([i + 0.2 for i in y], base, height=0.4, label="base", color="#9aa5b1")
        ax.barh([i - 0.2 for i in y], tuned, height=0.4, label="tuned", color="#2f7ed8")
        ax.set_yticks(list(y), names)
        ax.invert_yaxis()
        ax.set_title({"f1": "token F1", "rouge_l": "ROUGE-L", "judge": "judge (1-10)"}[metric])
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
