"""The evaluation section of the run report: one self-contained HTML fragment built from an eval folder.
It is final as built: the report inserts it as is (nothing parses it back).

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

from labalign.evaluate.results import (
    Accuracies,
    BranchResult,
    BranchScore,
    EvalResults,
    Evaluations,
    ForgettingResult,
    GeneralKnowledgeResult,
    MmluBranchItem,
    MmluBranchResult,
    MmluResult,
    Models,
    MtBenchResult,
    OpenBookResult,
    PairedDelta,
    Skipped,
    load,
    load_result,
)

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


def _delta(mean: float, low: float, high: float, digits: int = 3) -> str:
    """A delta with its interval; coloured only when the interval excludes zero."""
    cls = ""
    if low > 0 or high < 0:
        cls = ' class="delta-pos"' if mean > 0 else ' class="delta-neg"'
    # The table is wide: the interval goes under its mean.
    interval = f"[{low:+.{digits}f}, {high:+.{digits}f}]"
    return f'<td{cls}>{mean:+.{digits}f}<br><span class="ci">{interval}</span></td>'


def _paired(d: PairedDelta | None, digits: int = 3) -> str:
    return _delta(d.mean, d.ci_low, d.ci_high, digits) if d else "<td>-</td>"


def _accuracy_delta(a: Accuracies) -> str:
    return _delta(a.delta, a.ci_low, a.ci_high)


def _breakable(text: str) -> str:
    """Escaped `text` that may wrap after a slash when it is a name (a leaf path); "16/2/0" (wins, ties,
    losses) stays whole."""
    if not any(c.isalpha() for c in text):
        return escape(text)
    return "/<wbr>".join(escape(part) for part in text.split("/"))


def _table(head: list[str], rows: list[list[str]]) -> str:
    """`rows` are lists of ready `<td>` cells; `head` is plain text (escaped here)."""
    out = ['<table class="table"><thead><tr>']
    out += [f"<th>{_breakable(h)}</th>" for h in head]
    out.append("</tr></thead><tbody>")
    out += ["<tr>" + "".join(r) + "</tr>" for r in rows]
    out.append("</tbody></table>")
    return "".join(out)


def _td(text: str) -> str:
    return f"<td>{_breakable(text)}</td>"


def _models(result: Models, specs: Models | None) -> str:
    """The models as the user named them (specs), else their identities."""
    named = (specs or result).model_dump(exclude_none=True)
    parts = [f"{escape(k)}: <code>{escape(str(v))}</code>" for k, v in named.items() if v]
    return f"<p>{'; '.join(parts)}</p>" if parts else ""


def _branch(data: BranchResult, eval_dir: Path) -> str:
    overall = data.overall
    has_base = overall.base is not None
    metrics = [m for m in ("f1", "rouge_l", "judge") if getattr(overall.model, m) is not None]
    names = {"f1": "token F1", "rouge_l": "ROUGE-L", "judge": "judge 1-10"}
    head = ["leaf", "n"]
    for m in metrics:
        head += [f"base {names[m]}", f"tuned {names[m]}", "delta [95% CI]"] if has_base else [names[m]]
    if has_base:
        head.append("F1 W/T/L")
    rows = []
    entries: list[tuple[str, BranchScore]] = [(leaf.leaf, leaf) for leaf in data.leaves]
    for name, entry in [*entries, ("overall", overall)]:
        cells = [_td(name), _td(str(entry.model.n))]
        for m in metrics:
            if entry.base is not None:
                cells += [
                    _cell(getattr(entry.base, m)),
                    _cell(getattr(entry.model, m)),
                    _paired(getattr(entry.delta, m) if entry.delta else None),
                ]
            else:
                cells.append(_cell(getattr(entry.model, m)))
        if entry.delta is not None:
            cells.append(_wtl(entry.delta.f1))
        rows.append(cells)
    failed = {k: v for k, v in data.errors.items() if v}
    note = f'<p class="flag">failed generations: {escape(json.dumps(failed))}</p>' if failed else ""
    return (
        _models(data.models, data.specs)
        + _table(head, rows)
        + note
        + _img(eval_dir / "branch.png", "per-leaf scores, base vs tuned")
        + _img(eval_dir / "branch_scores.png", "distribution of per-question scores")
    )


def _mt_bench(data: MtBenchResult, eval_dir: Path) -> str:
    base = data.base
    head = ["", *(["base"] if base else []), "tuned"]
    rows = []
    names = [
        ("overall", "overall"),
        ("turn 1", "turn1"),
        ("turn 2", "turn2"),
        ("judge error rate", "error_rate"),
    ]
    for label, key in names:
        rows.append(
            [
                _td(label),
                *([_cell(getattr(base, key), 2)] if base else []),
                _cell(getattr(data.model, key), 2),
            ]
        )
    for cat, value in data.model.categories.items():
        base_cells = [_cell(base.categories.get(cat), 2)] if base else []
        rows.append([_td(cat), *base_cells, _cell(value, 2)])
    delta = ""
    if data.delta is not None:
        delta = _table(["tuned - base (per judgment)", "W/T/L"], [[_paired(data.delta, 2), _wtl(data.delta)]])
    return (
        _models(data.models.model_copy(update={"judge": data.judge}), data.specs)
        + f"<p>{data.questions} questions, each turn rated 1-10.</p>"
        + _table(head, rows)
        + delta
        + _img(eval_dir / "mt_bench.png", "MT-Bench ratings by category and turn")
    )


def _wtl(d: PairedDelta) -> str:
    return _td(f"{d.wins}/{d.ties}/{d.losses}")


def _mmlu(data: MmluResult, eval_dir: Path) -> str:
    tuned, base = data.model, data.base
    shown = [n for n in tuned.results if n in data.tasks or n in tuned.groups]
    head = ["task", *(["base"] if base else []), "tuned", "n"]
    rows = []
    for name in shown:
        base_cell = [_cell(base.results.get(name, {}).get("acc"))] if base else []
        rows.append(
            [_td(name), *base_cell, _cell(tuned.results[name].get("acc")), _td(str(tuned.n.get(name, "")))]
        )
    note = f"<p>limited to {data.limit} examples per task</p>" if data.limit else ""
    delta = ""
    if data.delta is not None:
        cls = "delta-pos" if data.delta > 0 else "delta-neg" if data.delta < 0 else ""
        delta = f'<p>accuracy change: <span class="{cls}">{data.delta:+.3f}</span></p>'
    return (
        _models(data.models, data.specs)
        + _table(head, rows)
        + note
        + delta
        + _img(eval_dir / "mmlu.png", "lm-eval accuracy, base vs tuned")
    )


def _scored_in(dtype: str | None) -> str:
    """Which precision the log-likelihoods were computed in (results written before it was recorded: none)."""
    return f"<p>log-likelihoods computed in {escape(dtype)}, base and tuned alike</p>" if dtype else ""


def _forgetting(data: ForgettingResult, eval_dir: Path) -> str:
    rows = [
        [_td(style), _cell(v.base, 2), _cell(v.model, 2), _cell(v.model / v.base)]
        for style, v in data.styles.items()
    ]
    ratio_cls = "delta-neg" if data.flagged else "delta-pos" if data.ratio < 1 else ""
    ratio = f'<td class="{ratio_cls}">{_num(data.ratio)}</td>' if ratio_cls else _cell(data.ratio)
    rows.append([_td("all"), _cell(data.base.perplexity, 2), _cell(data.model.perplexity, 2), ratio])
    parts = [
        _models(data.models, data.specs),
        f"<p>{data.dataset.documents} documents, {data.dataset.tokens} tokens "
        f"({escape(data.dataset.source)}); flagged when tuned perplexity exceeds the "
        f"base's by more than {100 * data.threshold:.0f}%.</p>",
        _table(["text", "base perplexity", "tuned perplexity", "ratio"], rows),
        _scored_in(data.dtype),
    ]
    if data.flagged:
        parts.append(f'<p class="flag">forgetting: perplexity up {100 * (data.ratio - 1):.1f}%</p>')
    mt = data.mt_bench_delta
    if isinstance(mt, Skipped):
        parts.append(f"<p>MT-Bench delta skipped: {escape(mt.skipped)}</p>")
    elif mt is not None:
        parts.append(_table(["MT-Bench tuned - base", "W/T/L"], [[_paired(mt, 2), _wtl(mt)]]))
    parts.append(_img(eval_dir / "forgetting.png", "general-text perplexity, base vs tuned"))
    return "".join(parts)


def _general_knowledge(data: GeneralKnowledgeResult, eval_dir: Path) -> str:
    rows = [
        [_td(subject), _cell(v.base), _cell(v.tuned), _td(str(v.n))] for subject, v in data.subjects.items()
    ]
    rows.append([_td("all"), _cell(data.base), _cell(data.tuned), _td(str(data.n))])
    parts = [
        _models(data.models, data.specs),
        f"<p>{data.n} questions ({escape(data.dataset.source)}); "
        f"{escape(data.metric)}. A regression when the whole 95% interval of the change lies "
        "below zero.</p>",
        _table(["subject", "base accuracy", "tuned accuracy", "n"], rows),
        _table(
            ["tuned - base", "gained", "lost"],
            [[_accuracy_delta(data), _td(str(data.gained)), _td(str(data.lost))]],
        ),
        _scored_in(data.dtype),
    ]
    if data.regression:
        parts.append(f'<p class="flag">general knowledge lost: {data.delta:+.3f}</p>')
    return "".join(parts)


def _filled(item: MmluBranchItem, pick: int) -> str:
    """An item's sentence with option `pick` in its gap (the option marked), escaped."""
    before = item.context.rsplit("\n", 1)[-1]
    return f"{escape(before)} <mark>{escape(item.choices[pick])}</mark>{escape(item.suffix)}"


def _mmlu_branch(data: MmluBranchResult, eval_dir: Path) -> str:
    rows = [
        [_td(leaf), _td(str(v.n)), _cell(v.base), _cell(v.tuned), _accuracy_delta(v)]
        for leaf, v in [*data.leaves.items(), ("all", data)]
    ]
    items = data.items
    learned = [i for i in items if i.tuned_pick == i.answer != i.base_pick]
    missed = [i for i in items if i.tuned_pick != i.answer]
    parts = [
        _models(data.models, data.specs),
        f"<p>One document sentence per item with a fact (a year, number, count or name) to complete, against "
        f"three of the same kind from elsewhere in the documents; {escape(data.metric)}; chance "
        f"{data.chance:.2f}.</p>",
        _table(["leaf", "items", "base accuracy", "tuned accuracy", "tuned - base [95% CI]"], rows),
        _scored_in(data.dtype),
        f"<p>{len(learned)} facts the tuned model completes and the base did not; {len(missed)} it still "
        "gets wrong.</p>",
    ]
    if learned:
        lis = "".join(f"<li>{_filled(i, i.answer)}</li>" for i in learned[:LISTED])
        parts.append(f"<p><strong>Learned</strong> (first {min(LISTED, len(learned))}):</p><ul>{lis}</ul>")
    if missed:
        lis = "".join(
            f"<li>{_filled(i, i.answer)} (picked: {escape(i.choices[i.tuned_pick])})</li>"
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


def _open_book(data: OpenBookResult, eval_dir: Path) -> str:
    shown = [(key, label) for key, label in _OPEN_BOOK if getattr(data, key) is not None]
    rows = [
        [
            _td(leaf),
            _td(str(v.n)),
            *(_cell(getattr(v, key)) for key, _ in shown),
            _cell(v.retrieval_recall, 2),
        ]
        for leaf, v in [*data.leaves.items(), ("all", data)]
    ]
    parts = [
        _models(Models(), data.specs),
        f"<p>Held-out knowledge questions (token F1), answered without the documents and with the "
        f"{data.k} best-matching paragraphs of the leaf's documents in the prompt "
        f"({escape(data.retriever)}). Recall: the share of questions whose answer's paragraph was "
        "among those retrieved.</p>",
        _table(["leaf", "n", *(label for _, label in shown), "recall"], rows),
        _img(eval_dir / "open_book.png", "token F1, closed book vs open book"),
    ]
    closed = [(q, q.tuned_closed, q.base_closed) for q in data.questions if q.tuned_closed and q.base_closed]
    if closed:
        gain = sorted(closed, key=lambda c: c[2].f1 - c[1].f1)
        learned = [c for c in gain if c[1].f1 - c[2].f1 >= 0.3][:LISTED]
        wrong = [c for c in closed if c[1].f1 < 0.3][:LISTED]
        for title, chosen in (("Now answered (closed book)", learned), ("Still wrong (closed book)", wrong)):
            if chosen:
                lis = "".join(
                    f"<li>{escape(q.question)}<br>tuned: {escape(tuned.answer[:200])}"
                    f"<br>reference: {escape(q.reference)}</li>"
                    for q, tuned, _ in chosen
                )
                parts.append(f"<p><strong>{escape(title)}</strong>:</p><ul>{lis}</ul>")
    return "".join(parts)


RENDERERS: dict[str, Callable[[Any, Path], str]] = {  # stem -> renderer of its RESULT_TYPES model
    "branch": _branch,
    "mt_bench": _mt_bench,
    "mmlu": _mmlu,
    "forgetting": _forgetting,
    "general_knowledge": _general_knowledge,
    "mmlu_branch": _mmlu_branch,
    "open_book": _open_book,
}


def _regressions(results: EvalResults | None) -> str:
    if not results or not results.regressions:
        return ""
    items = "".join(f"<li>{escape(r.message)}</li>" for r in results.regressions)
    return f'<div class="flag"><strong>Regressions</strong><ul>{items}</ul></div>'


def section(eval_dir: Path) -> str:
    """The report's evaluation section, from whatever result files `eval_dir` holds.

    An evaluation that was skipped shows its reason; one that never ran is left out. LabalignError when
    a result file exists but is not readable JSON."""
    results = load(eval_dir / "results.json", EvalResults)
    summaries = results.evaluations if results else Evaluations()
    parts = ['<section class="evaluation">', "<h2>Evaluation</h2>", _regressions(results)]
    shown = 0
    for name, title in EVALS:
        data = load_result(eval_dir, name)
        if data is None and isinstance(getattr(summaries, name), Skipped):
            data = getattr(summaries, name)
        if data is None:
            continue
        shown += 1
        took = results.seconds.get(name) if results else None
        timing = f' <span class="muted">({took / 60:.1f} min)</span>' if took is not None else ""
        parts.append(f"<h3>{escape(title)}{timing}</h3>")
        if isinstance(data, Skipped):
            parts.append(f'<p class="flag">skipped: {escape(data.skipped)}</p>')
            continue
        parts.append(RENDERERS[name](data, eval_dir))
    if not shown:
        parts.append(f"<p>No evaluation results in <code>{escape(str(eval_dir))}</code>.</p>")
    parts.append("</section>")
    return "\n".join(p for p in parts if p)
