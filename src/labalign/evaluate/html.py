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
    ("general_knowledge", "General knowledge kept (multiple choice, log-likelihood)"),
    ("mmlu_branch", "MMLU-branch: the documents' facts (multiple choice, log-likelihood)"),
    ("open_book", "Fine-tune or retrieve? Closed book vs open book"),
)
LISTED = 8  # facts shown per list (learned, still missed)


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


def _cell(value: Any, digits: int = 3) -> str:
    return f"<td>{_num(value, digits)}</td>"


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
    """The models as the user named them (specs), else their identities."""
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
        _models(data.get("specs") or data.get("models", {}))
        + _table(head, rows)
        + note
        + _img(eval_dir / "branch.png", "per-leaf scores, base vs tuned")
        + _img(eval_dir / "branch_scores.png", "distribution of per-question scores")
    )


def _mt_bench(data: dict[str, Any], eval_dir: Path) -> str:
    has_base = "base" in data
    head = ["", *(["base"] if has_base else []), "tuned"]
    rows = []
    names = [
        ("overall", "overall"),
        ("turn 1", "turn1"),
        ("turn 2", "turn2"),
        ("judge error rate", "error_rate"),
    ]
    for label, key in names:
        rows.append(
            [_td(label), *([_cell(data["base"][key], 2)] if has_base else []), _cell(data["model"][key], 2)]
        )
    for cat, value in data["model"]["categories"].items():
        base_cells = [f"<td>{_num(data['base']['categories'].get(cat), 2)}</td>"] if has_base else []
        rows.append([_td(cat), *base_cells, f"<td>{_num(value, 2)}</td>"])
    delta = ""
    if has_base:
        delta = _table(
            ["tuned - base (per judgment)", "W/T/L"], [[_delta(data["delta"], 2), _wtl(data["delta"])]]
        )
    return (
        _models(data.get("specs") or {**data.get("models", {}), "judge": data.get("judge")})
        + f"<p>{int(data['questions'])} questions, each turn rated 1-10.</p>"
        + _table(head, rows)
        + delta
        + _img(eval_dir / "mt_bench.png", "MT-Bench ratings by category and turn")
    )


def _wtl(d: dict[str, Any]) -> str:
    return _td(f"{d['wins']}/{d['ties']}/{d['losses']}")


def _mmlu(data: dict[str, Any], eval_dir: Path) -> str:
    has_base = "base" in data
    tuned = data["model"]
    shown = [n for n in tuned["results"] if n in data["tasks"] or n in tuned.get("groups", [])]
    head = ["task", *(["base"] if has_base else []), "tuned", "n"]
    rows = []
    for name in shown:
        acc = tuned["results"][name].get("acc")
        base_cell = []
        if has_base:
            base_cell = [f"<td>{_num(data['base']['results'].get(name, {}).get('acc'))}</td>"]
        rows.append([_td(name), *base_cell, f"<td>{_num(acc)}</td>", _td(str(tuned["n"].get(name, "")))])
    note = f"<p>limited to {int(data['limit'])} examples per task</p>" if data.get("limit") else ""
    delta = ""
    if data.get("delta") is not None:
        cls = "delta-pos" if data["delta"] > 0 else "delta-neg" if data["delta"] < 0 else ""
        delta = f'<p>accuracy change: <span class="{cls}">{data["delta"]:+.3f}</span></p>'
    return (
        _models(data.get("specs") or data.get("models", {}))
        + _table(head, rows)
        + note
        + delta
        + _img(eval_dir / "mmlu.png", "lm-eval accuracy, base vs tuned")
    )


def _forgetting(data: dict[str, Any], eval_dir: Path) -> str:
    rows = [
        [_td(style), _cell(v["base"], 2), _cell(v["model"], 2), _cell(v["model"] / v["base"])]
        for style, v in data["styles"].items()
    ]
    ratio_cls = "delta-neg" if data["flagged"] else "delta-pos" if data["ratio"] < 1 else ""
    rows.append(
        [
            _td("all"),
            f"<td>{_num(data['base']['perplexity'], 2)}</td>",
            f"<td>{_num(data['model']['perplexity'], 2)}</td>",
            f'<td class="{ratio_cls}">{_num(data["ratio"])}</td>'
            if ratio_cls
            else f"<td>{_num(data['ratio'])}</td>",
        ]
    )
    parts = [
        _models(data.get("specs") or data.get("models", {})),
        f"<p>{int(data['dataset']['documents'])} documents, {int(data['dataset']['tokens'])} tokens "
        f"({escape(str(data['dataset'].get('source', '')))}); flagged when tuned perplexity exceeds the "
        f"base's by more than {100 * data['threshold']:.0f}%.</p>",
        _table(["text", "base perplexity", "tuned perplexity", "ratio"], rows),
    ]
    if data["flagged"]:
        parts.append(f'<p class="flag">forgetting: perplexity up {100 * (data["ratio"] - 1):.1f}%</p>')
    mt = data.get("mt_bench_delta")
    if mt and "skipped" in mt:
        parts.append(f"<p>MT-Bench delta skipped: {escape(str(mt['skipped']))}</p>")
    elif mt:
        parts.append(_table(["MT-Bench tuned - base", "W/T/L"], [[_delta(mt, 2), _wtl(mt)]]))
    parts.append(_img(eval_dir / "forgetting.png", "general-text perplexity, base vs tuned"))
    return "".join(parts)


def _general_knowledge(data: dict[str, Any], eval_dir: Path) -> str:
    rows = [
        [_td(subject), _cell(v["base"]), _cell(v["tuned"]), _td(str(v["n"]))]
        for subject, v in data["subjects"].items()
    ]
    rows.append([_td("all"), _cell(data["base"]), _cell(data["tuned"]), _td(str(data["n"]))])
    delta = {"mean": data["delta"], "ci_low": data["ci_low"], "ci_high": data["ci_high"]}
    parts = [
        _models(data.get("specs") or data.get("models", {})),
        f"<p>{int(data['n'])} questions ({escape(str(data['dataset'].get('source', '')))}); "
        f"{escape(str(data['metric']))}. A regression when the whole 95% interval of the change lies "
        "below zero.</p>",
        _table(["subject", "base accuracy", "tuned accuracy", "n"], rows),
        _table(
            ["tuned - base", "gained", "lost"],
            [[_delta(delta), _td(str(data["gained"])), _td(str(data["lost"]))]],
        ),
    ]
    if data["regression"]:
        parts.append(f'<p class="flag">general knowledge lost: {data["delta"]:+.3f}</p>')
    return "".join(parts)


def _filled(item: dict[str, Any], pick: int) -> str:
    """An item's sentence with option `pick` in its gap (the option marked), escaped."""
    before = str(item["context"]).rsplit("\n", 1)[-1]
    return f"{escape(before)} <mark>{escape(str(item['choices'][pick]))}</mark>{escape(str(item['suffix']))}"


def _mmlu_branch(data: dict[str, Any], eval_dir: Path) -> str:
    rows = [
        [_td(leaf), _td(str(v["n"])), _cell(v["base"]), _cell(v["tuned"]), _delta({"mean": v["delta"], **v})]
        for leaf, v in data["leaves"].items()
    ]
    overall = {"mean": data["delta"], "significant": data["ci_low"] > 0 or data["ci_high"] < 0, **data}
    rows.append([_td("all"), _td(str(data["n"])), _cell(data["base"]), _cell(data["tuned"]), _delta(overall)])
    items = data.get("items", [])
    learned = [i for i in items if i["tuned_pick"] == i["answer"] != i["base_pick"]]
    missed = [i for i in items if i["tuned_pick"] != i["answer"]]
    parts = [
        _models(data.get("specs") or data.get("models", {})),
        f"<p>One document sentence per item with a fact (a year, number, count or name) to complete, against "
        f"three of the same kind from elsewhere in the documents; {escape(str(data['metric']))}; chance "
        f"{data['chance']:.2f}.</p>",
        _table(["leaf", "items", "base accuracy", "tuned accuracy", "tuned - base [95% CI]"], rows),
        f"<p>{len(learned)} facts the tuned model completes and the base did not; {len(missed)} it still "
        "gets wrong.</p>",
    ]
    if learned:
        lis = "".join(f"<li>{_filled(i, i['answer'])}</li>" for i in learned[:LISTED])
        parts.append(f"<p><strong>Learned</strong> (first {min(LISTED, len(learned))}):</p><ul>{lis}</ul>")
    if missed:
        lis = "".join(
            f"<li>{_filled(i, i['answer'])} (picked: {escape(str(i['choices'][i['tuned_pick']]))})</li>"
            for i in missed[:LISTED]
        )
        parts.append(f"<p><strong>Still wrong</strong> (first {min(LISTED, len(missed))}):</p><ul>{lis}</ul>")
    return "".join(parts)


_OPEN_BOOK = (
    ("base_closed", "base closed book"),
    ("tuned_closed", "tuned closed book"),
    ("base_open", "base open book"),
    ("tuned_open", "tuned open book"),
)


def _open_book(data: dict[str, Any], eval_dir: Path) -> str:
    shown = [(key, label) for key, label in _OPEN_BOOK if key in data]
    rows = [
        [_td(leaf), _td(str(v["n"])), *(_cell(v[key]) for key, _ in shown), _cell(v["retrieval_recall"], 2)]
        for leaf, v in [*data["leaves"].items(), ("all", data)]
    ]
    parts = [
        _models(data.get("specs") or data.get("models", {})),
        f"<p>Held-out knowledge questions (token F1), answered without the documents and with the "
        f"{int(data['k'])} best-matching paragraphs of the leaf's documents in the prompt "
        f"({escape(str(data['retriever']))}). Recall: the share of questions whose answer's paragraph was "
        "among those retrieved.</p>",
        _table(["leaf", "n", *(label for _, label in shown), "recall"], rows),
        _img(eval_dir / "open_book.png", "token F1, closed book vs open book"),
    ]
    questions = data.get("questions", [])
    if questions and "base_closed" in questions[0]:
        gain = sorted(questions, key=lambda q: q["base_closed"]["f1"] - q["tuned_closed"]["f1"])
        learned = [q for q in gain if q["tuned_closed"]["f1"] - q["base_closed"]["f1"] >= 0.3][:LISTED]
        wrong = [q for q in questions if q["tuned_closed"]["f1"] < 0.3][:LISTED]
        for title, chosen in (("Now answered (closed book)", learned), ("Still wrong (closed book)", wrong)):
            if chosen:
                lis = "".join(
                    f"<li>{escape(q['question'])}<br>tuned: {escape(q['tuned_closed']['answer'][:200])}"
                    f"<br>reference: {escape(q['reference'])}</li>"
                    for q in chosen
                )
                parts.append(f"<p><strong>{escape(title)}</strong>:</p><ul>{lis}</ul>")
    return "".join(parts)


RENDERERS: dict[str, Callable[[dict[str, Any], Path], str]] = {
    "branch": _branch,
    "mt_bench": _mt_bench,
    "mmlu": _mmlu,
    "forgetting": _forgetting,
    "general_knowledge": _general_knowledge,
    "mmlu_branch": _mmlu_branch,
    "open_book": _open_book,
}


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
            continue
        try:
            parts.append(RENDERERS[name](data, eval_dir))
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            raise LabalignError(
                f"unexpected evaluation results ({type(exc).__name__}: {exc})",
                path=eval_dir / f"{name}.json",
                hint="re-run `labalign evaluate`",
            ) from exc
    if not shown:
        parts.append(f"<p>No evaluation results in <code>{escape(str(eval_dir))}</code>.</p>")
    parts.append("</section>")
    return "\n".join(p for p in parts if p)
