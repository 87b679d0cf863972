"""The run report: every section from real stage outputs, escaping, partial and failed runs, damaged
files, secrets kept out, and `labalign report RUN` on the command line."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from labalign.config import load_settings
from labalign.errors import LabalignError
from labalign.evaluate import branch
from labalign.evaluate.plots import branch_chart
from labalign.evaluate.questions import EvalQuestion
from labalign.evaluate.results import EvalResults, Evaluations, Models, Regression, Skipped, save
from labalign.manifest import STAGES, Manifest, StageRecord
from labalign.report import REPORT_FILE, render_report
from labalign.sdg.driver import leaf_inputs
from labalign.sdg.generate import GenerateOptions, generate
from labalign.settings.train import TrainSettings
from labalign.taxonomy import ValidationOptions, validate_paths
from labalign.train.phases import TrainConfig, train
from tests.sdg_fakes import ScriptedTeacher
from tests.test_train_helpers import make_records, tiny_model_dir, write_jsonl

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "taxonomy"
LEAVES = (
    "compositional_skills/grounded/extraction/meeting_action_items",
    "compositional_skills/writing/formal_business_rewrite",
    "knowledge/history/quillmarrow_island",
)
SECTIONS = ("next", "leaves", "sdg", "samples", "training", "evaluation", "timings", "provenance")


def _manifest(run_dir: Path, statuses: dict[str, str], **fields: Any) -> Manifest:
    """A manifest as `labalign run` writes it, with the validate summary of the example taxonomy."""
    result = validate_paths([EXAMPLES], ValidationOptions(check_documents=False))
    (run_dir / "validation.json").write_text(result.report.record().model_dump_json())
    summary = {
        "leaves": [
            {
                "name": leaf.name,
                "kind": leaf.kind,
                "seed_examples": len(leaf.seed_examples),
                "document": leaf.document.repo if leaf.document else None,
            }
            for leaf in result.leaves
        ],
        "files": len(result.report.files),
        "errors": result.report.error_count,
        "warnings": result.report.warning_count,
    }
    stages = {}
    for index, stage in enumerate(STAGES):
        status = statuses.get(stage, "pending")
        stages[stage] = StageRecord(
            status=status,
            started=None if status == "pending" else "2025-06-02T09:14:03+00:00",
            finished="2025-06-02T09:20:41+00:00" if status == "done" else None,
            seconds=0.0 if status == "pending" else 10.0 * (index + 1),
            attempts=0 if status == "pending" else 1,
            summary=summary if stage == "validate" else {},
        )
    manifest = Manifest(
        command=["labalign", "run", str(EXAMPLES), "--out", str(run_dir)],
        taxonomy=str(EXAMPLES),
        profile="quick",
        models={"teacher": "default", "judge": None, "student": "default"},
        settings={"sdg": {"samples_per_leaf": 3}},
        inputs={"knowledge/history/quillmarrow_island/qna.yaml": "ab" * 32},
        versions={"python": "3.11", "labalign": "0.1.0"},
        stages=stages,
        **fields,
    )
    manifest.save(run_dir)
    return manifest


def _branch_results(eval_dir: Path) -> None:
    """branch.json and its chart as the evaluation suite writes them, plus results.json."""
    questions = [EvalQuestion(LEAVES[0], "grounded_skill", "heldout", f"q{i}", "a b c") for i in range(8)]
    questions += [EvalQuestion(LEAVES[2], "knowledge", "seed", f"k{i}", "x y") for i in range(8)]
    tuned = branch.Scored("tuned", ["a b c"] * 8 + ["nope"] * 8, [1.0] * 8 + [0.0] * 8, [1.0] * 16)
    base = branch.Scored("base", ["zzz"] * 8 + ["x y"] * 8, [0.0] * 8 + [1.0] * 8, [0.5] * 16)
    result = branch.report(questions, tuned, base, None)
    eval_dir.mkdir(parents=True, exist_ok=True)
    save(eval_dir / "branch.json", result)
    branch_chart(result, eval_dir / "branch.png")
    results = EvalResults(
        models=Models(model="tuned", base="base"),
        evaluations=Evaluations(mt_bench=Skipped(skipped="no judge model")),
        regressions=[Regression(eval="forgetting", metric="perplexity", message="perplexity up 25% > 10%")],
    )
    save(eval_dir / "results.json", results)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run built by the real stages: generation with the scripted teacher, training of a
    tiny model, branch evaluation results."""
    run_dir = tmp_path_factory.mktemp("runs") / "quick"
    run_dir.mkdir()
    settings = load_settings(overrides={"sdg.max_chunks": 2})
    leaves = validate_paths([EXAMPLES], ValidationOptions(check_documents=False)).leaves
    asyncio.run(
        generate(
            leaf_inputs(leaves, settings),
            teacher=ScriptedTeacher(bad_every=4),
            out_dir=run_dir / "data",
            options=GenerateOptions(samples_per_leaf=3, seed=1),
        )
    )
    data = tmp_path_factory.mktemp("records")
    train(
        TrainConfig(
            model=str(tiny_model_dir(data / "model")),
            out=run_dir / "train",
            phase1=write_jsonl(data / "p1.jsonl", make_records(12, seed=1)),
            phase2=write_jsonl(data / "p2.jsonl", make_records(12, seed=2)),
            settings=TrainSettings(
                batch_size=4, epochs=2, max_seq_len=128, max_batch_tokens=256, learning_rate=3e-3, bf16="off"
            ),
            cache_dir=data / "cache",
            show_progress=False,
        )
    )
    _branch_results(run_dir / "eval")
    _manifest(run_dir, {stage: "done" for stage in STAGES})
    return run_dir


@pytest.fixture
def run_copy(finished: Path, tmp_path: Path) -> Path:
    """A copy of the finished run that a test may damage."""
    copy = tmp_path / "quick"
    shutil.copytree(finished, copy, ignore=shutil.ignore_patterns("phase1", "phase2", "final"))
    return copy


def _images(html: str) -> list[bytes]:
    return [
        base64.b64decode(uri) for uri in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    ]


def test_finished_run_has_every_section(finished: Path) -> None:
    path = render_report(finished)
    assert path == finished / REPORT_FILE
    html = path.read_text(encoding="utf-8")
    for section in SECTIONS:
        assert f'id="{section}"' in html, section
    # Header: stage badges and models.
    assert html.count('badge badge-done">done') >= len(STAGES)
    assert "<dt>teacher</dt>" in html and "<dt>student</dt>" in html
    # What to do next: the exact commands on this run's final model.
    final = finished / "train" / "final"
    assert f"labalign chat {final}" in html and f"labalign serve {final}" in html
    assert f"labalign evaluate branch {EXAMPLES} --model {final} --base default" in html
    assert "If the run has stopped" not in html  # nothing to resume
    # Leaves and their funnel numbers, from stats.json.
    stats = json.loads((finished / "data" / "stats.json").read_text())
    for leaf in stats["leaves"]:
        assert leaf["leaf"].replace("/", "/<wbr>") in html
        assert f"{leaf['kept']} kept, {leaf['heldout']} held out" in html
        for stage in leaf["stages"]:
            assert f"<code>{stage['block']}</code>" in html
    assert "unparseable" in html  # the scripted teacher's garbage answers are counted drops
    # Samples: the first records of each leaf, collapsible.
    first = json.loads(
        (finished / "data" / "leaves" / LEAVES[1] / "samples.jsonl").read_text().splitlines()[0]
    )
    assert first["id"] in html and html.count('<div class="msg msg-assistant">') >= 3
    # Training: both phases in the table and the loss curves drawn from the log.
    summary = json.loads((finished / "train" / "summary.json").read_text())
    for phase in summary["phases"]:
        assert f"<tr><td>{phase['phase']}</td>" in html
        assert f"{phase['heldout_loss']:,.4f}" in html
    # Evaluation: the suite's fragment, with its significant deltas and the regression.
    assert '<section class="evaluation">' in html and 'class="delta-pos"' in html
    assert "perplexity up 25% &gt; 10%" in html and "skipped: no judge model" in html
    # Self-contained: every image inline (funnel, loss, branch, timings), nothing fetched or run.
    images = _images(html)
    assert len(images) >= 4 and all(png.startswith(b"\x89PNG") for png in images)
    assert (finished / "eval" / "branch.png").read_bytes() in images
    assert "<script" not in html and "<link" not in html and 'src="http' not in html


def test_checkpoint_drift_is_drawn_when_measured(run_copy: Path) -> None:
    assert "general-text drift of each checkpoint" not in render_report(run_copy).read_text()
    summary_path = run_copy / "train" / "summary.json"
    summary = json.loads(summary_path.read_text())
    for phase in summary["phases"]:
        phase["candidates"] = [
            {"step": 1, "heldout_loss": 2.0, "score": None, "general_ratio": 1.05},
            {"step": phase["best_step"], "heldout_loss": 1.5, "score": None, "general_ratio": 1.3},
        ]
    summary_path.write_text(json.dumps(summary))
    run = json.loads((run_copy / "train" / "run.json").read_text())
    run["settings"]["forgetting_budget"] = 1.1
    (run_copy / "train" / "run.json").write_text(json.dumps(run))
    html = render_report(run_copy).read_text()
    assert "general-text drift of each checkpoint" in html and "train.forgetting_budget</code> 1.1x" in html


def test_the_auto_interpolation_search_is_shown(run_copy: Path) -> None:
    (run_copy / "train" / "final").mkdir(exist_ok=True)
    summary_path = run_copy / "train" / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary["interpolation"] = 0.9
    summary["interpolation_candidates"] = [
        {"interpolation": 1.0, "general_ratio": 1.2345},
        {"interpolation": 0.95, "general_ratio": 1.15},
        {"interpolation": 0.9, "general_ratio": 1.0987},
    ]
    summary_path.write_text(json.dumps(summary))
    html = render_report(run_copy).read_text()
    assert "= base + 0.9 &times; (tuned &minus; base)" in html
    assert "train.interpolation auto" in html and "1.0: 1.234, 0.95: 1.150, 0.9: 1.099." in html


def test_sample_text_is_escaped(run_copy: Path) -> None:
    path = run_copy / "data" / "leaves" / LEAVES[1] / "samples.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[0]["messages"][0]["content"] = 'Rewrite <script>alert("x")</script> & <b>this</b>'
    records[0]["metadata"]["note"] = "<img src=x onerror=alert(1)>"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    html = render_report(run_copy).read_text()
    assert "<script>" not in html and "<b>this</b>" not in html and "<img src=x" not in html
    assert "Rewrite &lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &lt;b&gt;this&lt;/b&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html


def test_samples_show_generated_records_before_seeds(run_copy: Path) -> None:
    path = run_copy / "data" / "leaves" / LEAVES[1] / "samples.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    seed = {**records[0], "id": "seed-record-0", "metadata": {**records[0]["metadata"], "source": "seed"}}
    path.write_text("".join(json.dumps(r) + "\n" for r in [seed, *records]))
    html = render_report(run_copy).read_text()
    assert records[0]["id"] in html and "seed-record-0" not in html
    path.write_text(json.dumps(seed) + "\n")  # only seeds: they are shown
    assert "seed-record-0" in render_report(run_copy).read_text()


def test_a_fact_question_leaf_counts_facts_not_rounds(run_copy: Path) -> None:
    path = run_copy / "data" / "stats.json"
    stats = json.loads(path.read_text())
    leaf = stats["leaves"][0]
    leaf.update(facts=7, rounds=0)
    path.write_text(json.dumps(stats))
    summary = re.search(
        rf"<summary><strong>{re.escape(leaf['leaf'].split('/')[0])}.*?</summary>",
        render_report(run_copy).read_text(),
        re.S,
    )
    assert summary and "7 from fact questions" in summary.group(0)
    assert not re.search(r"\d rounds?,", summary.group(0))


def test_sentences_without_a_training_question_are_listed(run_copy: Path) -> None:
    path = run_copy / "data" / "stats.json"
    stats = json.loads(path.read_text())
    unasked = ["The largest lake is Lake Tennet & it is deep."]
    stats["leaves"][0].update(facts=7, fact_sentences=9, unasked_facts=unasked)
    path.write_text(json.dumps(stats))
    html = render_report(run_copy).read_text()
    assert "7 from fact questions on 8 of 9 sentences" in html
    assert "<li>The largest lake is Lake Tennet &amp; it is deep.</li>" in html


def test_partial_run_after_validation(tmp_path: Path) -> None:
    run_dir = tmp_path / "fresh"
    run_dir.mkdir()
    _manifest(run_dir, {"validate": "done", "generate": "running"})
    html = render_report(run_dir).read_text()
    for section in SECTIONS:
        assert f'id="{section}"' in html, section
    for leaf in LEAVES:
        assert leaf.replace("/", "/<wbr>") in html  # the leaves table, from the validate summary
    assert "The generate stage</strong> is running" in html
    assert "The train stage</strong> has not run yet" in html
    assert "The evaluate stage</strong> has not run yet" in html
    assert 'badge-running">running' in html and 'badge-pending">pending' in html
    # The commands are there, said to work once training has run; resuming is offered.
    assert "These work once training has written" in html
    assert "If the run has stopped, resume it (generate, train, evaluate not done yet)" in html
    assert f"labalign run {EXAMPLES} --out {run_dir}" in html
    assert "could not read" not in html  # missing files are a stage status, not an error


def test_failed_stage_shows_its_error(run_copy: Path) -> None:
    manifest = _manifest(run_copy, {s: "done" for s in ("validate", "generate", "train")})
    manifest.stages["evaluate"].status = "failed"
    manifest.stages["evaluate"].error = "judge at http://gpu:8001/v1: <connection refused> after 5 retries"
    manifest.save(run_copy)
    shutil.rmtree(run_copy / "eval")
    html = render_report(run_copy).read_text()
    assert "<h1>quick " in html and 'badge-failed">failed</span></h1>' in html
    assert "The evaluate stage failed." in html
    error = "judge at http://gpu:8001/v1: &lt;connection refused&gt; after 5 retries"
    assert html.count(error) == 2  # the alert at the top and the evaluation section
    assert "If the run has stopped, resume it (evaluate not done yet)" in html
    assert 'id="training"' in html and "phase2" in html  # finished stages still show


def test_damaged_files_become_notes(run_copy: Path) -> None:
    (run_copy / "data" / "stats.json").write_text("{oops")
    (run_copy / "validation.json").write_text("[]")
    (run_copy / "eval" / "branch.json").write_text("[1, 2")
    (run_copy / "train" / "summary.json").write_text(json.dumps({"phases": [{"phase": "phase1"}]}))
    with (run_copy / "train" / "training_log.jsonl").open("a") as f:
        f.write('{"event": "train", "phase": "pha')  # a kill mid-line
    html = render_report(run_copy).read_text()
    assert re.search(r"could not read data/stats.json: .*stats.json: not valid JSON", html)
    assert re.search(r"could not read the evaluation results: .*branch.json", html)
    assert re.search(r"could not read validation.json: .*validation.json: not a JSON object", html)
    for leaf in LEAVES:  # the leaves table still comes from the manifest
        assert f'<td class="name">{leaf.replace("/", "/<wbr>")}</td>' in html
    assert 'id="training"' in html and "loss per phase" in html  # the log's complete lines still plot
    # A summary.json that is not a training summary is a one-line note naming the first problem.
    assert re.search(
        r"could not read train/summary.json: .*no readable training summary \(out: Field required\)", html
    )


def test_training_in_progress(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    (run_dir / "train" / "phase1").mkdir(parents=True)
    _manifest(run_dir, {"validate": "done", "generate": "done", "train": "running"})
    done = {"phase": "phase1", "steps": 3, "samples": 12, "tokens": 900, "seconds": 3.0, "best_step": 3,
            "best_dir": "x", "heldout_loss": 2.5, "score": None, "train_samples": 4,
            "heldout_samples": 1}  # fmt: skip
    (run_dir / "train" / "phase1" / "done.json").write_text(json.dumps(done))
    log = [{"event": "train", "phase": "phase1", "step": s, "loss": 3.0 - s / 10} for s in (1, 2, 3)]
    log += [{"event": "eval", "phase": "phase1", "step": 3, "heldout_loss": 2.5}]
    log += [{"event": "train", "phase": "phase2", "step": s, "loss": 2.0 - s / 10} for s in (1, 2)]
    (run_dir / "train" / "training_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    html = render_report(run_dir).read_text()
    assert "<tr><td>phase1</td>" in html and '<td class="num">2.5000</td>' in html
    assert "in progress; last training loss 1.8000" in html
    assert "The train stage</strong> is running" in html
    assert len(_images(html)) == 2  # the loss curves so far, and the timings


def test_secrets_stay_out(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    manifest = _manifest(run_dir, {"validate": "done"})
    manifest.command = ["labalign", "run", "tax", "--teacher", "https://bob:hunter2@llm.example/v1",
                        "--api-key", "sk-123", "--judge-api-key=sk-456"]  # fmt: skip
    manifest.models["teacher"] = "https://bob:hunter2@llm.example/v1"
    manifest.settings = {"llm": {"api_key": "sk-789", "max_tokens": 512}}
    manifest.save(run_dir)
    html = render_report(run_dir).read_text()
    for secret in ("hunter2", "sk-123", "sk-456", "sk-789"):
        assert secret not in html
    assert "https://***@llm.example/v1" in html and "--api-key &#39;***&#39;" in html
    assert "&#34;max_tokens&#34;: 512" in html  # the rest of the settings stays


def test_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(LabalignError, match="not a run directory"):
        render_report(tmp_path)
    with pytest.raises(LabalignError, match="no such run directory"):
        render_report(tmp_path / "missing")
    assert not (tmp_path / REPORT_FILE).exists()


# --- the command ---


def _app() -> typer.Typer:
    """The full CLI, where `report` is registered (its root prints user errors as one line)."""
    from labalign.cli import app

    return app


def test_cli_help_has_an_example() -> None:
    result = CliRunner().invoke(_app(), ["report", "--help"])
    assert result.exit_code == 0 and "Example: labalign report" in result.output and "--open" in result.output


def test_cli_writes_the_report(run_copy: Path) -> None:
    (run_copy / REPORT_FILE).unlink(missing_ok=True)
    result = CliRunner().invoke(_app(), ["report", str(run_copy)])
    assert result.exit_code == 0, result.output
    assert str(run_copy / REPORT_FILE) in result.output
    assert 'id="evaluation"' in (run_copy / REPORT_FILE).read_text()


def test_cli_errors_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(_app(), ["report", str(tmp_path)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "not a run directory" in lines[0]
    (tmp_path / "manifest.json").write_text('{"stages": 3}')
    result = CliRunner().invoke(_app(), ["report", str(tmp_path)])
    assert result.exit_code == 1 and "manifest is damaged" in result.output
    assert len(result.output.strip().splitlines()) == 1
