"""The evaluation section of the run report: one self-contained HTML fragment built from an eval folder.

The fragment has no external assets (plots are inline base64 PNGs) and uses only a few classes that the
report's stylesheet styles: `table`, `delta-pos`, `delta-neg`, `flag`. Every piece of text that came
from a model, a file or a user is escaped.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from html import escape
from pathlib import Path
from typing import Any

from labalign.errors import LabalignError

# Result files in the order the section shows them, with their titles.
EVALS: tuple[tuple[str, str], ...] = (
    ("branch", "Branch evaluation (held-out taxonomy questions)"),
    ("mt_bench", "MT-Bench (single-answer grading by a judge)"),
    ("mmlu", "MMLU (lm-evaluation-harness)"),
    ("forgetting", "Forgetting check (perplexity on general text)"),
)


def _load(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LabalignError(
            f"cannot read evaluation results: {exc}", path=path, hint="re-run `labalign evaluate`"
        ) from exc
    if not isinstance(data, dict):
        raise LabalignError("evaluation results must be a JSON object", path=path)
    return data


def _img(path: Path, alt: str) -> str:
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{escape(alt)}" src="data:image/png;base64,{data}"></figure>'


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return escape(str(value))
    return f"{value:.{digits}f}"


def _delta(d: dict[str, Any] | None, digits: int = 3) -> str:
    """A delta with its interval; coloured only when the interval excludes zero."""
    if not d:
        return "<td>-</td>"
    cls = ""
    if d.get("significant"):
        cls = ' class="delta-pos"' if d["mean"] > 0 else ' class="delta-neg"'
    text = f"{d['mean']:+.{digits}f} [{d['ci_low']:+.{digits}f}, {d['ci_high']:+.{digits}f}]"
    return f"<td{cls}>{text}</td>"


def _table(head: list[str], rows: list[list[str]]) -> str:
    """`rows` are lists of ready `<td>` cells; `head` is plain text (escaped here)."""
    out = ['<table class="table"><thead><tr>']
    out += [f"<th>{escape(h)}</th>" for h in head]
    out.append("</tr></thead><tbody>")
    out += ["<tr>" + "".join(r) + "</tr>" for r in rows]
    out.append("</tbody></table>")
    return "".join(out)


def _td(text: str) -> str:
    return f"<td>{escape(text)}</td>"


def _models(models: dict[str, Any]) -> str:
    parts = [f"{escape(k)}: <code>{escape(str(v))}</code>" for k, v in models.items() if v]
    return f"<p>{'; '.join(parts)}</p>" if parts else ""


def _branch(data: dict[str, Any], eval_dir: Path) -> str:
    overall = data["overall"]
    has_base = "base" in overall
    metrics = [m for m in ("f1", "rouge_l", "judge") if overall["model"].get(m) is not None]
    names = {"f1": "token F1", "rouge_l": "ROUGE-L", "judge": "judge 1-10"}
    head = ["leaf", "n"]
    for m in metrics:
        head += [f"base {names[m]}", f"tuned {names[m]}", "delta [95% CI]"] if has_base else [names[m]]
    if has_base:
        head.append("F1 W/T/L")
    rows = []
    for entry in [*data["leaves"], {"leaf": "overall", **overall}]:
        cells = [_td(entry["leaf"]), _td(str(entry["model"]["n"]))]
        for m in metrics:
            if has_base:
                cells += [
                    f"<td>{_num(entry['base'].get(m))}</td>",
                    f"<td>{_num(entry['model'].get(m))}</td>",
                    _delta(entry.get("delta", {}).get(m)),
                ]
            else:
                cells.append(f"<td>{_num(entry['model'].get(m))}</td>")
        if has_base:
            d = entry["delta"]["f1"]
            cells.append(_td(f"{d['wins']}/{d['ties']}/{d['losses']}"))
        rows.append(cells)
    errors = data.get("errors", {})
    failed = {k: v for k, v in errors.items() if v}
    note = f'<p class="flag">failed generations: {escape(json.dumps(failed))}</p>' if failed else ""
    return (
        _models(data.get("models", {}))
        + _table(head, rows)
        + note
        + _img(eval_dir / "branch.png", "per-leaf scores, base vs tuned")
        + _img(eval_dir / "branch_scores.png", "distribution of per-question scores")
    )


RENDERERS: dict[str, Callable[[dict[str, Any], Path], str]] = {"branch": _branch}


def _regressions(results: dict[str, Any] | None) -> str:
    if not results or not results.get("regressions"):
        return ""
    items = "".join(f"<li>{escape(str(r.get('message', r)))}</li>" for r in results["regressions"])
    return f'<div class="flag"><strong>Regressions</strong><ul>{items}</ul></div>'


def section(eval_dir: Path) -> str:
    """The report's evaluation section, from whatever result files `eval_dir` holds.

    An evaluation that was skipped shows its reason; one that never ran is left out. LabalignError when
    a result file exists but is not readable JSON."""
    results = _load(eval_dir / "results.json")
    summaries: dict[str, Any] = (results or {}).get("evaluations", {})
    parts = ['<section class="evaluation">', "<h2>Evaluation</h2>", _regressions(results)]
    shown = 0
    for name, title in EVALS:
        data = _load(eval_dir / f"{name}.json")
        if data is None and isinstance(summaries.get(name), dict) and "skipped" in summaries[name]:
            data = summaries[name]
        if data is None:
            continue
        shown += 1
        parts.append(f"<h3>{escape(title)}</h3>")
        if "skipped" in data:
            parts.append(f'<p class="flag">skipped: {escape(str(data["skipped"]))}</p>')
        elif name in RENDERERS:
            parts.append(RENDERERS[name](data, eval_dir))
    if not shown:
        parts.append(f"<p>No evaluation results in <code>{escape(str(eval_dir))}</code>.</p>")
    parts.append("</section>")
    return "\n".join(p for p in parts if p)
