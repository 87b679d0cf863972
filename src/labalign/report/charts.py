"""The report's charts, drawn with matplotlib's object API (no pyplot: no global figure state, no
backend choice) and returned as PNG data URIs so the report stays one self-contained file."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# The stylesheet's colours, so charts and badges agree.
GREEN, BLUE, RED, AMBER, GREY, INK = "#1a7f4b", "#2563eb", "#c2410c", "#b45309", "#9ca3af", "#1f2937"
STATUS_COLOURS = {"done": GREEN, "running": BLUE, "failed": RED, "interrupted": AMBER, "pending": GREY}
PHASE_COLOURS = ("#2563eb", "#7c3aed", "#0891b2", "#db2777")


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    fig.patch.set_facecolor("white")
    return fig


def _style(ax: Axes) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.spines["left"].set_color(GREY)
    ax.spines["bottom"].set_color(GREY)
    ax.tick_params(colors=INK, labelsize=8)
    ax.grid(alpha=0.25)
    ax.set_axisbelow(True)


def png_uri(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _short(name: str, width: int = 72) -> str:
    """Leaf paths are long; the tail names the leaf, the table below has the full path."""
    return name if len(name) <= width else "…" + name[-(width - 1) :]


def funnel_chart(leaves: Sequence[dict[str, Any]]) -> str:
    """Per leaf: samples kept for training, held out, and rows dropped on the way (all stages)."""
    names = [_short(str(leaf["leaf"])) for leaf in leaves]
    kept = [int(leaf["kept"]) for leaf in leaves]
    held = [int(leaf["heldout"]) for leaf in leaves]
    dropped = [int(leaf["dropped_total"]) for leaf in leaves]
    fig = _figure(9.5, 0.42 * len(leaves) + 1.3)
    ax = fig.add_subplot()
    y = list(range(len(leaves)))
    ax.barh(y, kept, color=GREEN, label="kept for training")
    ax.barh(y, held, left=kept, color=BLUE, label="held out")
    lefts = [k + h for k, h in zip(kept, held, strict=True)]
    ax.barh(y, dropped, left=lefts, color="#f3b4a0", label="dropped (rows, all stages)")
    for i, (k, h, d) in enumerate(zip(kept, held, dropped, strict=True)):
        label = f"  {k} kept · {h} held out · {d} dropped"
        ax.text(k + h + d, i, label, va="center", fontsize=7.5, color=INK)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlabel("rows", fontsize=8, color=INK)
    ax.margins(x=0.25)
    _style(ax)
    ax.grid(axis="y", visible=False)
    ax.legend(fontsize=7.5, loc="lower right", frameon=False, ncols=3, bbox_to_anchor=(1, 1.0))
    return png_uri(fig)


def loss_chart(records: Sequence[dict[str, Any]], phases: Sequence[str]) -> str | None:
    """One panel per phase: training loss per optimizer step and held-out loss at each evaluation;
    a phase's best checkpoint (the lowest held-out loss) is ringed. None when nothing was logged."""
    shown = [p for p in phases if any(r.get("phase") == p and r.get("event") == "train" for r in records)]
    if not shown:
        return None
    cols = min(len(shown), 2)
    rows = (len(shown) + cols - 1) // cols
    fig = _figure(4.6 * cols, 3.1 * rows)
    for index, phase in enumerate(shown):
        ax = fig.add_subplot(rows, cols, index + 1)
        colour = PHASE_COLOURS[index % len(PHASE_COLOURS)]
        train = [r for r in records if r.get("phase") == phase and r.get("event") == "train"]
        held = [
            r
            for r in records
            if r.get("phase") == phase and r.get("event") == "eval" and r.get("heldout_loss") is not None
        ]
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], color=colour, lw=1.2, label="train")
        if held:
            ax.plot(
                [r["step"] for r in held],
                [r["heldout_loss"] for r in held],
                "o--",
                color=INK,
                lw=1,
                ms=3.5,
                label="held-out",
            )
            best = min(held, key=lambda r: r["heldout_loss"])
            ax.plot([best["step"]], [best["heldout_loss"]], "o", ms=10, mfc="none", mec=RED, mew=1.5)
        ax.set_title(phase, fontsize=10, color=INK, loc="left")
        ax.set_xlabel("optimizer step", fontsize=8, color=INK)
        ax.set_ylabel("loss (nats/token)", fontsize=8, color=INK)
        _style(ax)
        ax.legend(fontsize=7.5, frameon=False)
    fig.tight_layout()
    return png_uri(fig)


def drift_chart(phases: Sequence[dict[str, Any]], budget: float | None) -> str | None:
    """Every checkpoint of every phase as a point: its general-text perplexity ratio to the base (on the
    held-out replay text) against its held-out loss (or its step, without a held-out split); the kept
    checkpoint is ringed and the forgetting budget is a dashed line. None without ratios."""
    points = [
        (str(p.get("phase")), c, c["step"] == p.get("best_step"))
        for p in phases
        for c in p.get("candidates") or []
        if c.get("general_ratio") is not None
    ]
    if not points:
        return None
    by_loss = all(c.get("heldout_loss") is not None for _, c, _ in points)
    fig = _figure(6.4, 3.4)
    ax = fig.add_subplot(1, 1, 1)
    names = list(dict.fromkeys(name for name, _, _ in points))
    for index, name in enumerate(names):
        mine = [(c, kept) for n, c, kept in points if n == name]
        ys = [c["heldout_loss"] if by_loss else c["step"] for c, _ in mine]
        colour = PHASE_COLOURS[index % len(PHASE_COLOURS)]
        ax.plot([c["general_ratio"] for c, _ in mine], ys, "o-", color=colour, lw=1, ms=4, label=name)
        for (c, kept), y in zip(mine, ys, strict=True):
            if kept:
                ax.plot([c["general_ratio"]], [y], "o", ms=11, mfc="none", mec=RED, mew=1.5)
    if budget is not None:
        ax.axvline(budget, color=RED, ls="--", lw=1, label=f"budget {budget:g}x")
    ax.axvline(1.0, color=GREY, ls=":", lw=1)
    ax.set_xlabel("general-text perplexity / base (held-out replay text)", fontsize=8, color=INK)
    ax.set_ylabel("held-out loss (nats/token)" if by_loss else "optimizer step", fontsize=8, color=INK)
    _style(ax)
    ax.legend(fontsize=7.5, frameon=False)
    fig.tight_layout()
    return png_uri(fig)


def timing_chart(stages: Sequence[tuple[str, float, str, str]]) -> str | None:
    """Wall time per stage (name, seconds, status, label), coloured by status; None when nothing took
    time."""
    if not any(seconds > 0 for _, seconds, _, _ in stages):
        return None
    fig = _figure(7.5, 0.38 * len(stages) + 1.0)
    ax = fig.add_subplot()
    y = list(range(len(stages)))
    values = [seconds for _, seconds, _, _ in stages]
    ax.barh(y, values, color=[STATUS_COLOURS.get(status, GREY) for _, _, status, _ in stages])
    for i, (_, seconds, _, label) in enumerate(stages):
        if seconds > 0:
            ax.text(seconds, i, f"  {label}", va="center", fontsize=8, color=INK)
    ax.set_yticks(y, [name for name, _, _, _ in stages])
    ax.invert_yaxis()
    ax.set_xlabel("seconds", fontsize=8, color=INK)
    ax.margins(x=0.15)
    _style(ax)
    ax.grid(axis="y", visible=False)
    return png_uri(fig)
