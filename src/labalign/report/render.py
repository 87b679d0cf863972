"""`report.html` from a run directory: whatever the stages have written so far, read defensively.

A stage that has not run shows its status; a file that is missing or damaged becomes a note in its
section, never an exception, so the report can be written after any stage (or while one runs).
Every piece of text from the run (leaf names, samples, errors) goes through Jinja's autoescaping.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup
from pydantic import ValidationError

from labalign import __version__
from labalign.errors import LabalignError, first_problem
from labalign.fileio import write_text_atomic
from labalign.jsonl import iter_jsonl
from labalign.manifest import STAGES, Manifest, StageSummary, ValidateSummary, load_manifest
from labalign.redact import redact_text
from labalign.sdg.stats import STATS_FILE, GenerationStats
from labalign.taxonomy.problems import ValidationRecord

REPORT_FILE = "report.html"
SAMPLES_PER_LEAF = 3
SAMPLE_SCAN = 200  # records read per leaf to find generated ones ahead of the seed records
MAX_MESSAGE_CHARS = 3000  # a sample's message beyond this is cut, saying how much is left out
MAX_METADATA_CHARS = 4000
CHART_LEAVES = 60  # the funnel chart shows the leaves with the fewest kept samples beyond this many
# What a damaged or half-written file can raise while it is read and summarised: the section notes it.
READ_ERRORS = (OSError, ValueError, KeyError, TypeError, LabalignError)
# Settings keys whose values must not travel in a report that is mailed around.
_SECRET_KEY = re.compile(r"(api_?key|secret|password|token)$", re.IGNORECASE)
_URL_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")

T = TypeVar("T")


@dataclass
class StageView:
    name: str
    status: str
    seconds: float = 0.0
    attempts: int = 0
    started: str | None = None
    finished: str | None = None
    error: str | None = None
    summary: StageSummary | None = None


@dataclass
class Section:
    """One part of the report: the stage it shows, what it found, and what could not be read."""

    stage: StageView
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def guard(self, what: str, fn: Callable[[], T]) -> T | None:
        try:
            return fn()
        except READ_ERRORS as exc:
            self.notes.append(f"could not read {what}: {exc}")
            return None


def render_report(run_dir: Path) -> Path:
    """Write `run_dir/report.html` from what the run has produced so far and return its path.

    LabalignError when `run_dir` is not a run directory (no manifest.json) or its manifest is
    damaged; anything else missing or unreadable is shown in the report."""
    if not run_dir.is_dir():
        raise LabalignError(
            "no such run directory", path=run_dir, hint="pass the folder `labalign run` wrote"
        )
    manifest = load_manifest(run_dir)
    if manifest is None:
        raise LabalignError(
            "not a run directory (no manifest.json)",
            path=run_dir,
            hint="pass the folder `labalign run` wrote, e.g. runs/NAME",
        )
    html = _environment().get_template("report.html.j2").render(**build_context(run_dir, manifest))
    out = run_dir / REPORT_FILE
    write_text_atomic(out, redact_text(html))  # no URL credentials, whatever a section quotes
    return out


def build_context(run_dir: Path, manifest: Manifest) -> dict[str, Any]:
    """Everything the template shows, from the manifest and the stages' files."""
    stages = _stages(manifest)
    validate = Section(stages["validate"])
    generate = Section(stages["generate"])
    train = Section(stages["train"])
    evaluate = Section(stages["evaluate"])
    timings = Section(stages["report"])
    stats = generate.guard("data/stats.json", lambda: _generation_stats(run_dir / "data"))
    validation = validate.guard("validation.json", lambda: _read_validation(run_dir / "validation.json"))
    validate.data = validate.guard("the leaves", lambda: _leaves(stages, validation, stats)) or {}
    generate.data = generate.guard("data/stats.json", lambda: _funnel(stats)) or {}
    generate.data["samples"] = generate.guard(
        "the samples", lambda: _samples(run_dir / "data", _leaf_names(validate.data, stats))
    )
    train.data = _training(run_dir / "train", train)
    evaluate.data = _evaluation(run_dir / "eval", evaluate)
    timings.data = timings.guard("the timings", lambda: _timings(stages, generate.data, train.data)) or {}
    return {
        "run": _header(run_dir, manifest, stages),
        "next": _next_steps(run_dir, manifest, stages),
        "validate": validate,
        "generate": generate,
        "train": train,
        "evaluate": evaluate,
        "timings": timings,
        "provenance": _provenance(manifest),
        "samples_per_leaf": SAMPLES_PER_LEAF,
        "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "labalign_version": __version__,
    }


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("labalign.report", "templates"),
        autoescape=True,  # every name, sample and error in the run is text, never markup
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["duration"] = duration
    env.filters["number"] = number
    env.filters["when"] = when
    env.filters["breakable"] = breakable
    return env


# --- formatting (template filters) ---


def duration(seconds: float | None) -> str:
    if seconds is None or seconds <= 0:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def number(value: Any, digits: int | None = None) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if digits is not None:
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else f"{value:,.4g}"


def when(stamp: str | None) -> str:
    """An ISO timestamp as readable UTC (the template's labels say UTC); anything else as it is."""
    if not stamp:
        return "-"
    try:
        moment = datetime.fromisoformat(stamp)
    except ValueError:
        return stamp
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def breakable(path: str) -> Markup:
    """A leaf path that may wrap after its slashes, not in the middle of a word."""
    return Markup("/<wbr>").join(path.split("/"))


# --- reading ---


def _read_json(path: Path) -> dict[str, Any] | None:
    """The parsed object, None when the file does not exist (a stage not run yet); errors name it."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LabalignError(f"not valid JSON ({exc})", path=path) from exc
    if not isinstance(data, dict):
        raise LabalignError("not a JSON object", path=path)
    return data


def _read_validation(path: Path) -> ValidationRecord | None:
    data = _read_json(path)
    if data is None:
        return None
    try:
        return ValidationRecord.model_validate(data)
    except ValidationError as exc:
        raise LabalignError(f"not a validation report ({first_problem(exc)})", path=path) from exc


def _head_jsonl(path: Path, n: int) -> list[dict[str, Any]]:
    """The first `n` objects of a JSON Lines file, without reading the rest of it."""
    out: list[dict[str, Any]] = []
    lines: Iterator[tuple[int, Any]] = iter_jsonl(path)
    for _, value in lines:
        if isinstance(value, dict):
            out.append(value)
        if len(out) >= n:
            break
    return out


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: "***" if _SECRET_KEY.search(str(k)) and v else _redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    if isinstance(value, str):
        return _URL_USERINFO.sub("***@", value)
    return value


def _redact_command(argv: list[str]) -> str:
    """The command line as a shell would take it, with the value of any secret-looking flag hidden."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        flag, eq, _ = arg.partition("=")
        secret = flag.startswith("--") and bool(_SECRET_KEY.search(flag.replace("-", "_")))
        if hide_next:
            out.append("***")
        elif secret and eq:
            out.append(f"{flag}=***")
        else:
            out.append(_URL_USERINFO.sub("***@", arg))
        hide_next = secret and not eq
    return shlex.join(out)


# --- sections ---


def _stages(manifest: Manifest) -> dict[str, StageView]:
    views = {}
    for name in (*STAGES, *(s for s in manifest.stages if s not in STAGES)):
        record = manifest.stage(name)
        status = record.status
        if name == "report":
            # This page is the report stage's output: while it is written the manifest still says
            # running (or pending on a standalone `labalign report`), but the page itself exists.
            status = "done"
        views[name] = StageView(
            name=name,
            status=status,
            seconds=record.seconds,
            attempts=record.attempts,
            started=record.started,
            finished=record.finished,
            error=record.error,
            summary=record.summary,
        )
    return views


def _overall(stages: dict[str, StageView]) -> str:
    statuses = [v.status for k, v in stages.items() if k != "report"]
    for status in ("failed", "interrupted", "running"):
        if status in statuses:
            return status
    return "done" if all(s == "done" for s in statuses) else "pending"


def _header(run_dir: Path, manifest: Manifest, stages: dict[str, StageView]) -> dict[str, Any]:
    failed = next((v for v in stages.values() if v.status == "failed"), None)
    return {
        "name": run_dir.resolve().name,
        "path": str(run_dir),
        "profile": manifest.profile,
        "taxonomy": manifest.taxonomy,
        "models": {k: _redact(v) for k, v in manifest.models.items() if v},
        "created": manifest.created,
        "updated": manifest.updated,
        "status": _overall(stages),
        "stages": list(stages.values()),
        "total_seconds": sum(v.seconds for v in stages.values()),
        "failed": failed,
    }


def _next_steps(run_dir: Path, manifest: Manifest, stages: dict[str, StageView]) -> dict[str, Any]:
    final = run_dir / "train" / "final"
    q = shlex.quote
    commands = [
        ("Chat with the tuned model in the terminal", f"labalign chat {q(str(final))}"),
        ("Serve it as an OpenAI-compatible API on port 8000", f"labalign serve {q(str(final))}"),
    ]
    gguf = run_dir / "train" / "final.gguf"
    if gguf.is_file():
        commands.append(
            (
                "Run the GGUF file with llama.cpp (LM Studio, Ollama take it too)",
                f"labalign serve {q(str(gguf))}",
            )
        )
    else:
        commands.append(
            (
                "Export it for llama.cpp or Ollama",
                f"labalign model export {q(str(final))} --quant q8_0 --out model.gguf",
            )
        )
    student = manifest.models.get("student") or "default"
    if manifest.taxonomy:
        evaluate = (
            f"labalign evaluate branch {q(manifest.taxonomy)} --model {q(str(final))} "
            f"--base {q(_redact(student))}"
        )
        commands.append(("Compare it with the base student on the taxonomy's questions", evaluate))
    unfinished = [v.name for k, v in stages.items() if k != "report" and v.status != "done"]
    return {
        "ready": (final / "config.json").is_file() or (final / "adapter_config.json").is_file(),
        "final": str(final),
        "commands": commands,
        "unfinished": unfinished,
        "resume": _redact_command(manifest.command) if manifest.command and unfinished else None,
    }


def _leaves(
    stages: dict[str, StageView], validation: ValidationRecord | None, stats: GenerationStats | None
) -> dict[str, Any]:
    summary = stages["validate"].summary
    validated = summary if isinstance(summary, ValidateSummary) else None
    problems: list[dict[str, Any]] = []
    by_leaf: dict[str, tuple[int, int]] = {}
    for file in validation.files if validation else []:
        by_leaf[file.path.removesuffix("/qna.yaml")] = (len(file.errors), len(file.warnings))
        for severity, found in (("error", file.errors), ("warning", file.warnings)):
            problems += [{"path": file.path, "severity": severity, **p.model_dump()} for p in found]
    generated = {leaf.leaf: leaf for leaf in stats.leaves} if stats is not None else {}
    rows = []
    listed: list[dict[str, Any]] = [leaf.model_dump() for leaf in validated.leaves] if validated else []
    listed = listed or [{"name": name} for name in generated]
    for leaf in listed:
        name = str(leaf["name"])
        counts = by_leaf.get(name)
        gen = generated.get(name)
        rows.append(
            {
                "name": name,
                "kind": leaf.get("kind") or "-",
                "seed_examples": leaf.get("seed_examples"),
                "document": _document(leaf.get("document")),
                "kept": gen.kept if gen else None,
                "heldout": gen.heldout if gen else None,
                "errors": counts[0] if counts else None,
                "warnings": counts[1] if counts else None,
            }
        )
    return {
        "leaves": rows,
        "problems": problems,
        "errors": validated.errors if validated else validation.errors if validation else None,
        "warnings": validated.warnings if validated else None,
    }


def _document(document: Any) -> str:
    if not document:
        return ""
    if isinstance(document, dict):
        patterns = ", ".join(str(p) for p in document.get("patterns", []))
        repo = str(document.get("repo", ""))
        return f"{repo} ({patterns})" if patterns else repo
    return str(document)


def _leaf_names(leaves: dict[str, Any], stats: GenerationStats | None) -> list[str]:
    names = [str(leaf["name"]) for leaf in leaves.get("leaves", [])]
    names += [leaf.leaf for leaf in (stats.leaves if stats is not None else []) if leaf.leaf not in names]
    return names


def _generation_stats(data_dir: Path) -> GenerationStats | None:
    return GenerationStats.load(data_dir) if (data_dir / STATS_FILE).is_file() else None


def _funnel(stats: GenerationStats | None) -> dict[str, Any]:
    if stats is None:
        return {}
    leaves: list[dict[str, Any]] = []
    for leaf in stats.leaves:
        stages = []
        widest = max([1, *(max(s.rows_in, s.rows_out) for s in leaf.stages)])
        dropped_total = 0
        for stage in leaf.stages:
            dropped = {k: v for k, v in stage.dropped.items() if v}
            dropped_total += sum(dropped.values())
            stages.append(
                {
                    "block": stage.block,
                    "in": stage.rows_in,
                    "out": stage.rows_out,
                    "dropped": dropped,
                    "kept_without_output": stage.kept_without_output or {},
                    "out_pct": round(100 * stage.rows_out / widest, 1),
                    "lost_pct": round(100 * max(0, stage.rows_in - stage.rows_out) / widest, 1),
                }
            )
        leaves.append(
            {
                "leaf": leaf.leaf,
                "kept": leaf.kept,
                "heldout": leaf.heldout,
                "rounds": leaf.rounds,
                "facts": leaf.facts,
                "fact_sentences": leaf.fact_sentences,
                "unasked_facts": leaf.unasked_facts,
                "teacher_calls": leaf.teacher_calls,
                "teacher_tokens": leaf.teacher_tokens,
                "dropped_total": dropped_total,
                "stages": stages,
            }
        )
    charted = leaves
    if len(leaves) > CHART_LEAVES:
        charted = sorted(leaves, key=lambda leaf: leaf["kept"])[:CHART_LEAVES]
    from labalign.report.charts import funnel_chart

    return {
        "teacher": _redact(stats.teacher),
        "judge": _redact(stats.judge),
        "seed": stats.seed,
        "samples_per_leaf": stats.samples_per_leaf,
        "phase1_records": stats.phase1_records,
        "phase2_records": stats.phase2_records,
        "teacher_calls": sum(leaf.teacher_calls for leaf in stats.leaves),
        "teacher_tokens": sum(leaf.teacher_tokens for leaf in stats.leaves),
        "leaves": leaves,
        "chart": funnel_chart(charted) if leaves else None,
        "chart_partial": len(charted) < len(leaves),
    }


def _cut(text: str, limit: int) -> tuple[str, int]:
    return (text, 0) if len(text) <= limit else (text[:limit], len(text) - limit)


def _samples(data_dir: Path, names: list[str]) -> list[dict[str, Any]]:
    root = data_dir / "leaves"
    out = []
    for name in names:
        path = root / name / "samples.jsonl"
        if not path.resolve().is_relative_to(root.resolve()):
            continue  # a leaf name with '..' must not read outside the data folder
        if not path.is_file():
            continue  # not generated (yet): the section's stage status says so
        entry: dict[str, Any] = {"leaf": name, "records": [], "note": None}
        try:
            entry["records"] = [_sample(r) for r in _pick_samples(path, SAMPLES_PER_LEAF)]
        except READ_ERRORS as exc:
            entry["note"] = f"could not read samples: {exc}"
        if not entry["records"] and entry["note"] is None:
            entry["note"] = "no samples were kept for this leaf"
        out.append(entry)
    return out


def _pick_samples(path: Path, n: int) -> list[dict[str, Any]]:
    """Up to `n` records, generated ones first: a leaf that also trains on its seed examples lists them
    first, and those are the user's own words, not what the teacher wrote."""
    head = _head_jsonl(path, SAMPLE_SCAN)

    def is_seed(record: dict[str, Any]) -> bool:
        metadata = record.get("metadata")
        return isinstance(metadata, dict) and metadata.get("source") == "seed"

    return sorted(head, key=is_seed)[:n]  # stable: file order within each group


def _sample(record: dict[str, Any]) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    for message in record.get("messages") or []:
        if not isinstance(message, dict):
            continue  # not a chat message: nothing to show
        text, cut = _cut(str(message.get("content", "")), MAX_MESSAGE_CHARS)
        messages.append({"role": str(message.get("role", "?")), "content": text, "cut": cut})
    metadata = record.get("metadata") or {}
    pretty = json.dumps(_redact(metadata), indent=2, ensure_ascii=False)
    meta_text, meta_cut = _cut(pretty, MAX_METADATA_CHARS)
    first = str(next((m["content"] for m in messages if m["role"] == "user"), ""))
    lines = [line for line in first.splitlines() if line.strip()]
    # Grounded and context-in-prompt records put the question after the context: title them by it.
    question_last = metadata.get("kind") == "grounded_skill" or metadata.get("variant") == "context_in_prompt"
    title = (lines[-1] if question_last else lines[0]) if lines else "(no user message)"
    return {
        "id": str(record.get("id", "")),
        "title": title if len(title) <= 140 else title[:139] + "…",
        "tags": [str(metadata[k]) for k in ("kind", "variant") if metadata.get(k)]
        + (["replay"] if metadata.get("replay") else [])
        + (["unmask"] if record.get("unmask") else []),
        "messages": messages,
        "metadata": meta_text,
        "metadata_cut": meta_cut,
    }


def _training(train_dir: Path, section: Section) -> dict[str, Any]:
    from labalign.train.summary import SUMMARY_FILE, TrainResult, load_phase
    from labalign.train.trainlog import read_log  # tolerant of a partial last line (a running stage)

    log = section.guard("train/training_log.jsonl", lambda: read_log(train_dir / "training_log.jsonl")) or []
    summary = section.guard(
        "train/summary.json",
        lambda: TrainResult.load(train_dir) if (train_dir / SUMMARY_FILE).is_file() else None,
    )
    phases: list[dict[str, Any]] = []
    if summary is not None:
        phases = [p.model_dump() for p in summary.phases]
    else:
        # No summary yet: the phases that finished left done.json, the running one only its log.
        for done in sorted(train_dir.glob("*/done.json")):
            record = section.guard(f"train/{done.parent.name}/done.json", partial(load_phase, done))
            if record is not None:
                phases.append(record.model_dump())
    logged = list(dict.fromkeys(str(r.get("phase")) for r in log if r.get("event") == "train"))
    finished = {str(p.get("phase")) for p in phases}
    for name in logged:
        if name not in finished:
            steps = [r for r in log if r.get("phase") == name and r.get("event") == "train"]
            last = steps[-1]
            phases.append(
                {"phase": name, "running": True, "steps": last.get("step"), "last_loss": last.get("loss")}
            )
    for phase in phases:
        tokens, seconds = phase.get("tokens"), phase.get("seconds")
        if isinstance(tokens, int | float) and isinstance(seconds, int | float) and seconds > 0:
            phase["tokens_per_s"] = tokens / seconds
    order = [str(p["phase"]) for p in phases] or logged
    chart = section.guard("the training log", lambda: _loss_chart(log, order, train_dir))
    from labalign.report.charts import drift_chart

    budget = _forgetting_budget(train_dir)
    drift = section.guard("the checkpoints' drift", lambda: drift_chart(phases, budget))
    final = train_dir / "final"
    return {
        "phases": phases,
        "chart": chart,
        "drift": drift,
        "budget": budget,
        "final": str(final) if final.is_dir() else None,
        "adapter": (final / "adapter_config.json").is_file(),
        "interpolation": summary.interpolation if summary is not None else 1.0,
        # interpolation auto: each weight tried and its held-out general perplexity ratio
        "tried": summary.interpolation_candidates if summary is not None else [],
        "heldout": any(r.get("heldout_loss") is not None for r in log),
    }


def _forgetting_budget(train_dir: Path) -> float | None:
    try:
        settings = json.loads((train_dir / "run.json").read_text(encoding="utf-8")).get("settings", {})
    except (OSError, ValueError):
        return None
    budget = settings.get("forgetting_budget") if isinstance(settings, dict) else None
    return float(budget) if isinstance(budget, int | float) else None


def _loss_chart(log: list[dict[str, Any]], phases: list[str], train_dir: Path) -> str | None:
    from labalign.report.charts import loss_chart

    chart = loss_chart(log, phases)
    if chart is None and (train_dir / "loss.png").is_file():
        import base64

        # A log we cannot plot (e.g. removed) but the trainer's own plot is there.
        chart = "data:image/png;base64," + base64.b64encode((train_dir / "loss.png").read_bytes()).decode()
    return chart


def _evaluation(eval_dir: Path, section: Section) -> dict[str, Any]:
    if not eval_dir.is_dir():
        return {"html": None}
    from labalign.report.evaluation import section as evaluation_html

    html = section.guard("the evaluation results", lambda: evaluation_html(eval_dir))
    if not html:
        return {"html": None}
    return {"html": Markup(html)}  # built and escaped by report.evaluation, final as it is


def _timings(
    stages: dict[str, StageView], funnel: dict[str, Any], training: dict[str, Any]
) -> dict[str, Any]:
    details: dict[str, str] = {}
    if funnel.get("teacher_calls"):
        details["generate"] = (
            f"{funnel['teacher_calls']:,} teacher calls, {funnel.get('teacher_tokens') or 0:,} tokens"
        )
    parts = [
        f"{p['phase']} {duration(p.get('seconds'))}"
        + (f" ({p['tokens_per_s']:,.0f} tok/s)" if p.get("tokens_per_s") else "")
        for p in training.get("phases", [])
        if p.get("seconds")
    ]
    if parts:
        details["train"] = ", ".join(parts)
    from labalign.report.charts import timing_chart

    rows = [(v.name, v.seconds, v.status, duration(v.seconds)) for v in stages.values()]
    return {"details": details, "chart": timing_chart(rows)}


def _provenance(manifest: Manifest) -> dict[str, Any]:
    return {
        "command": _redact_command(manifest.command) if manifest.command else "",
        "inputs": sorted(manifest.inputs.items()),
        "versions": sorted(manifest.versions.items()),
        "settings": json.dumps(_redact(manifest.settings), indent=2, sort_keys=True, ensure_ascii=False),
    }
