"""Loss curves: training loss per step and held-out loss per evaluation, per phase and combined."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_losses(records: list[dict[str, Any]], dest: Path, *, phases: list[str] | None = None) -> None:
    """Draw the train/eval records of `phases` (all, in order of appearance, when None) into a PNG;
    several phases are laid end to end, separated by a dashed line."""
    import matplotlib

    matplotlib.use("Agg")  # no display: headless servers, CI, subprocesses
    import matplotlib.pyplot as plt

    order = phases or list(dict.fromkeys(str(r.get("phase")) for r in records))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    offset = 0
    for index, phase in enumerate(order):
        train = [r for r in records if r.get("phase") == phase and r.get("event") == "train"]
        evals = [r for r in records if r.get("phase") == phase and r.get("event") == "eval"]
        if not train:
            continue
        color = f"C{index}"
        ax.plot(
            [offset + r["step"] for r in train],
            [r["loss"] for r in train],
            color=color,
            lw=1,
            label=f"{phase} train",
        )
        held = [r for r in evals if r.get("heldout_loss") is not None]
        if held:
            ax.plot(
                [offset + r["step"] for r in held],
                [r["heldout_loss"] for r in held],
                "o--",
                color=color,
                ms=4,
                label=f"{phase} held-out",
            )
        last = max(r["step"] for r in train)
        if index and offset:
            ax.axvline(offset + 0.5, color="grey", ls=":", lw=1)
        offset += last
    ax.set_xlabel("optimizer step" if len(order) == 1 else "optimizer step (phases end to end)")
    ax.set_ylabel("loss (nats / token)")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(dest, dpi=100)
    plt.close(fig)
