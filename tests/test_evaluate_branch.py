"""Branch evaluation: metrics, judge parsing, bootstrap deltas, question sources, report and CLI."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from labalign.cli import app
from labalign.errors import LabalignError
from labalign.evaluate import branch
from labalign.evaluate.judge import parse_rating
from labalign.evaluate.questions import EvalQuestion, default_heldout_dir, gather
from labalign.evaluate.results import BranchResult, as_json
from labalign.evaluate.stats import paired_delta
from labalign.llm.types import LLMRequest
from labalign.taxonomy import ValidationOptions, load_leaves
from labalign.textmetrics import token_f1
from tests.llm_fakes import RuleBackend

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "taxonomy"


def test_token_f1_squad_normalisation() -> None:
    assert token_f1("The harbour guild.", "harbour guild") == 1.0
    assert token_f1("in 1852", "It was built in 1852 by the guild") == pytest.approx(
        2 * (1 * 2 / 7) / (1 + 2 / 7)
    )
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0 and token_f1("cat", "dog") == 0.0


@pytest.mark.parametrize(
    ("text", "rating"),
    [
        ("The answer is right. Rating: [[8]]", 8.0),
        ("Rating: 7", 7.0),
        ("I give it 6/10.", 6.0),
        ("9", 9.0),
        ("[[11]] then Rating: 4", 4.0),
        ("no idea", None),
        ("Rating: 0", None),
        ("[[7.5]]", 7.5),
    ],
)
def test_parse_rating(text: str, rating: float | None) -> None:
    assert parse_rating(text) == rating


def test_paired_delta_interval_and_counts() -> None:
    d = paired_delta([0.9, 0.8, 1.0, 0.7, 0.9, 0.8] * 5, [0.1, 0.2, 0.1, 0.3, 0.2, 0.1] * 5)
    assert d.significant and d.low <= d.mean <= d.high and d.wins == 30 and d.losses == 0
    noise = paired_delta([0.5, 0.6, 0.4, 0.5], [0.55, 0.45, 0.5, 0.5])
    assert not noise.significant and noise.ties + noise.wins + noise.losses == 4


def test_gather_sources_and_errors(tmp_path: Path) -> None:
    leaves = load_leaves([EXAMPLES], ValidationOptions(check_documents=False))
    heldout = default_heldout_dir(EXAMPLES)
    assert heldout is not None
    qs = gather(leaves, heldout_dir=heldout, include_seeds=False)
    assert {q.source for q in qs} == {"heldout"} and len(qs) == 124
    grounded = next(q for q in qs if q.kind == "grounded_skill")
    assert grounded.context and grounded.prompt().startswith(grounded.context.strip()[:20])
    with_seeds = gather(leaves, heldout_dir=heldout)
    assert sum(q.source == "seed" for q in with_seeds) == 15 + 8 + 6
    bad = tmp_path / "knowledge/history/quillmarrow_island/heldout.jsonl"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"question": "q", "reference": "r"}\n{oops\n')
    with pytest.raises(LabalignError) as info:
        gather(leaves, heldout_dir=tmp_path)
    assert info.value.line == 2


class Answering(RuleBackend):
    """Answers with the reference (good=True) or with nonsense; judges by a fixed rating."""

    def __init__(self, references: dict[str, str], good: bool, name: str) -> None:
        super().__init__(self.answer, name)
        self.references, self.good = references, good

    def answer(self, r: LLMRequest) -> str:
        assert r.messages is not None and r.params.temperature == 0.0
        text = r.messages[-1].content
        if text.startswith("Please act as an impartial judge"):
            return "Fine. Rating: [[9]]" if "[The Assistant's Answer]\nsecret" not in text else "bad"
        return self.references.get(text, "") if self.good else "purple monkey dishwasher"


def test_report_per_leaf_and_overall() -> None:
    qs = [EvalQuestion("a", "freeform_skill", "heldout", f"q{i}", f"answer number {i}") for i in range(12)]
    qs += [EvalQuestion("b", "knowledge", "seed", f"k{i}", f"fact {i} here") for i in range(12)]
    refs = {q.prompt(): q.reference for q in qs}
    judge = Answering(refs, True, "judge")
    tuned = asyncio.run(branch.score_model(Answering(refs, True, "tuned"), qs, judge=judge))
    base = asyncio.run(branch.score_model(Answering(refs, False, "base"), qs, judge=judge))
    result = branch.report(qs, tuned, base, "judge")
    overall = result.overall
    assert overall.model.f1 == 1.0 and overall.base is not None and overall.base.f1 == 0.0
    assert overall.delta is not None and overall.delta.f1.significant and overall.delta.f1.wins == 24
    assert [leaf.leaf for leaf in result.leaves] == ["a", "b"]
    assert result.leaves[1].sources == {"heldout": 0, "generated": 0, "seed": 12}
    assert overall.model.judge == 9.0 and overall.model.judge_unparseable == 0
    assert BranchResult.model_validate_json(json.dumps(as_json(result))) == result  # what is saved reads back


def test_cli_branch_json_and_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from labalign.evaluate import suite

    leaves = load_leaves([EXAMPLES], ValidationOptions(check_documents=False))
    refs = {q.prompt(): q.reference for q in gather(leaves, heldout_dir=default_heldout_dir(EXAMPLES))}
    monkeypatch.setattr(suite, "open_model", lambda spec, s, cache: Answering(refs, spec == "tuned", spec))
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "branch",
            "--model",
            "tuned",
            "--base",
            "base",
            "--taxonomy",
            str(EXAMPLES),
            "--format",
            "json",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["models"] == {"model": "tuned", "base": "base"}  # no judge: absent
    assert len(data["leaves"]) == 3 and all(leaf["delta"]["f1"]["significant"] for leaf in data["leaves"])
    assert (tmp_path / "branch.png").stat().st_size > 1000
    assert (tmp_path / "branch_scores.png").stat().st_size > 1000
    assert json.loads((tmp_path / "branch.json").read_text()) == data
    answers = [json.loads(line) for line in (tmp_path / "branch_answers.jsonl").read_text().splitlines()]
    assert len(answers) == data["overall"]["model"]["n"] and answers[0]["model"]["f1"] == 1.0
    text = CliRunner().invoke(
        app, ["evaluate", "branch", "--model", "tuned", "-t", str(EXAMPLES), "--out", str(tmp_path / "t")]
    )
    assert text.exit_code == 0 and "overall" in text.output
