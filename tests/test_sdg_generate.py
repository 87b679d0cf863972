"""End-to-end generation with a scripted teacher: counts honoured, records well-formed, deterministic,
leaf-local, held-out kept out, funnels explain every drop."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from labalign.cli import app
from labalign.config import load_settings
from labalign.llm.types import LLMRequest
from labalign.sdg.blocks import LLMBlockConfig
from labalign.sdg.generate import GenerateOptions, LeafInput, generate, heldout_count
from labalign.sdg.pipeline import builtin_pipeline
from labalign.taxonomy import ValidationOptions, load_leaves
from tests.sdg_fakes import ScriptedTeacher, prompt_text

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "taxonomy"


def jobs(max_chunks: int = 4) -> list[LeafInput]:
    from labalign.sdg.driver import leaf_inputs

    s = load_settings(overrides={"sdg.max_chunks": max_chunks})
    return leaf_inputs(load_leaves([EXAMPLES], ValidationOptions(check_documents=False)), s)


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run(out: Path, teacher: ScriptedTeacher, **options: Any) -> Any:
    return asyncio.run(generate(jobs(), teacher=teacher, out_dir=out, options=GenerateOptions(**options)))


def test_counts_shapes_and_mixes(tmp_path: Path) -> None:
    result = run(tmp_path, ScriptedTeacher(bad_every=5), samples_per_leaf=7, seed=3)
    for leaf in result.leaves:
        assert len(leaf.train) == 7, leaf.stats.record()
        assert len(leaf.heldout) == heldout_count(7, 0.1) == 1
    phase1, phase2 = read(tmp_path / "phase1.jsonl"), read(tmp_path / "phase2.jsonl")
    for rec in phase1 + phase2:
        assert set(rec) == {"id", "messages", "metadata", "unmask"}
        assert [m["role"] for m in rec["messages"]] == ["user", "assistant"]
        assert all(m["content"].strip() for m in rec["messages"])
    variants = [r["metadata"]["variant"] for r in phase1]
    assert variants.count("closed_book") == 7 and variants.count("context_in_prompt") == 7
    assert any(v.startswith("augmentation:") for v in variants)
    skills = [r for r in phase2 if not r["metadata"].get("replay")]
    assert len(skills) == 14 and {r["metadata"]["kind"] for r in skills} == {
        "freeform_skill",
        "grounded_skill",
    }
    assert len(phase2) - len(skills) == round(len(phase1) * 0.5)
    knowledge = next(r for r in phase1 if r["metadata"]["variant"] == "closed_book")["metadata"]
    assert knowledge["document"]["source"] == "quillmarrow_island.md" and knowledge["document"]["lines"]
    assert knowledge["teacher"] == "scripted:v1" and set(knowledge["scores"]) == {
        "faithful",
        "relevancy",
        "question_score",
    }
    stats = json.loads((tmp_path / "stats.json").read_text())
    kinds = {leaf.leaf.name: leaf.leaf.kind for leaf in result.leaves}
    for leaf in stats["leaves"]:
        pipelines = [builtin_pipeline(kinds[leaf["leaf"]])]
        if kinds[leaf["leaf"]] == "knowledge":
            pipelines.append(builtin_pipeline("knowledge_facts"))
        choices = {b.name: b.n for p in pipelines for b in p.config.blocks if isinstance(b, LLMBlockConfig)}
        for stage in leaf["stages"]:
            if stage["block"] in ("contexts", "parse_qa"):  # these make several rows from one
                continue
            # Every row that left the funnel has a counted reason (an LLM block with n choices
            # makes n rows of each).
            made = stage["in"] * choices.get(stage["block"], 1)
            assert made - stage["out"] == sum(stage["dropped"].values()), stage


def test_more_than_thirty_samples_are_honoured(tmp_path: Path) -> None:
    result = run(tmp_path, ScriptedTeacher(), samples_per_leaf=40, heldout_fraction=0.0)
    assert [len(leaf.train) for leaf in result.leaves] == [40, 40, 40]


def test_same_seed_same_bytes_other_seed_other_data(tmp_path: Path) -> None:
    run(tmp_path / "a", ScriptedTeacher(bad_every=4), samples_per_leaf=5, seed=9)
    run(tmp_path / "b", ScriptedTeacher(bad_every=4), samples_per_leaf=5, seed=9)
    run(tmp_path / "c", ScriptedTeacher(bad_every=4), samples_per_leaf=5, seed=10)
    for name in ("phase1.jsonl", "phase2.jsonl", "heldout.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "phase2.jsonl").read_bytes() != (tmp_path / "c" / "phase2.jsonl").read_bytes()


class Recording(ScriptedTeacher):
    def __init__(self) -> None:
        super().__init__()
        self.prompts: list[tuple[str, str]] = []

    def answer(self, request: LLMRequest) -> str:
        self.prompts.append((request.tag, prompt_text(request)))
        return super().answer(request)


def test_leaf_local_seeding_and_heldout_never_trained(tmp_path: Path) -> None:
    teacher = Recording()
    result = run(tmp_path, teacher, samples_per_leaf=4, heldout_fraction=0.5)
    seeds = {
        leaf.leaf.name: [q.question.strip() for s in leaf.leaf.seed_examples for q in s.qna]
        for leaf in result.leaves
    }
    for tag, prompt in teacher.prompts:
        for other, questions in seeds.items():
            if other != tag:
                assert not any(q in prompt for q in questions), (tag, other)
    trained = {
        m["content"]
        for r in read(tmp_path / "phase1.jsonl") + read(tmp_path / "phase2.jsonl")
        for m in r["messages"]
    }
    heldout = read(tmp_path / "heldout.jsonl")
    assert len(heldout) == 3 * 2
    assert not any(h["question"] in trained for h in heldout)


def test_a_leaf_whose_samples_all_fail_is_reported_not_fatal(tmp_path: Path) -> None:
    result = run(tmp_path, ScriptedTeacher(low_scores=True), samples_per_leaf=3)
    assert all(len(leaf.train) == 0 for leaf in result.leaves)
    stats = json.loads((tmp_path / "stats.json").read_text())
    skill = next(s for s in stats["leaves"] if s["leaf"].endswith("formal_business_rewrite"))
    keep = next(s for s in skill["stages"] if s["block"] == "keep_good_questions")
    assert keep["out"] == 0 and keep["dropped"] == {"question_score=0": keep["in"]}
    assert skill["rounds"] == 4  # it kept trying up to max_rounds
    # No judged teacher sample anywhere: only the knowledge document's own text is trained on (and
    # replayed), as chunks and as the answers of fact questions (which no judge filters).
    assert {r["metadata"]["variant"] for r in read(tmp_path / "phase1.jsonl")} == {"document", "fact"}
    assert all(r["metadata"].get("replay") for r in read(tmp_path / "phase2.jsonl"))


def test_cli_generate_data_stats_and_show(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import labalign.cli.generate as cli

    monkeypatch.setattr(cli, "open_teacher", lambda spec, s, cache: ScriptedTeacher())
    monkeypatch.setenv("LABALIGN_SDG__MAX_CHUNKS", "3")
    runner = CliRunner()
    out = tmp_path / "data"
    result = runner.invoke(
        app,
        [
            "generate",
            str(EXAMPLES),
            "--out",
            str(out),
            "-n",
            "3",
            "--seed",
            "3",
            "--leaves",
            "compositional_skills",
            "--leaves",
            "knowledge",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "generation funnel" in result.output and "phase1.jsonl:" in result.output
    assert {p.name for p in out.iterdir()} >= {"phase1.jsonl", "phase2.jsonl", "stats.json", "heldout.jsonl"}
    result = runner.invoke(app, ["data", "stats", str(out), "--format", "json"])
    assert result.exit_code == 0 and json.loads(result.output)["records"]["phase1"]["closed_book"] == 3
    leaf = "compositional_skills/writing/formal_business_rewrite"
    result = runner.invoke(app, ["data", "show", str(out), "--leaf", leaf, "-n", "2"])
    assert result.exit_code == 0 and result.output.count("user:") == 2
    result = runner.invoke(app, ["data", "show", str(out), "--leaf", "nope"])
    assert result.exit_code == 1 and "no samples for leaf 'nope'" in result.output
    # A leaf name that walks out of the folder reads nothing, even where a samples.jsonl waits.
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "samples.jsonl").write_text((out / "leaves" / leaf / "samples.jsonl").read_text())
    escape = os.path.relpath(outside, out / "leaves")
    result = runner.invoke(app, ["data", "show", str(out), "--leaf", escape])
    assert result.exit_code == 1 and "no samples for leaf" in result.output and "user:" not in result.output
    result = runner.invoke(app, ["generate", str(EXAMPLES), "--out", str(out), "--leaves", "nothing/here"])
    assert result.exit_code == 1 and "no leaf matches" in result.output


def test_a_round_starts_only_the_chunks_it_needs(tmp_path: Path) -> None:
    from labalign.sdg.generate import CHUNK_ROWS, FIRST_WINDOW_ROWS

    result = run(tmp_path, ScriptedTeacher(), samples_per_leaf=40, heldout_fraction=0.0)
    stats = {s.leaf: s.record().model_dump(by_alias=True) for s in result.stats}
    freeform = stats["compositional_skills/writing/formal_business_rewrite"]
    # The round has 40 x oversample 2.0 = 80 rows; every row survives, so once the first chunk shows
    # that, the rows already started are enough and the last chunk is never sent to the teacher.
    assert freeform["rounds"] == 1 and freeform["kept"] == 40
    assert freeform["stages"][0]["in"] == FIRST_WINDOW_ROWS == 80 - CHUNK_ROWS
    # A teacher whose answers all fail gets every row of every round, as before.
    failing = run(
        tmp_path / "fail", ScriptedTeacher(low_scores=True), samples_per_leaf=40, heldout_fraction=0.0
    )
    stats = {s.leaf: s.record().model_dump(by_alias=True) for s in failing.stats}
    assert stats["compositional_skills/writing/formal_business_rewrite"]["stages"][0]["in"] == 4 * 80


def test_oversample_setting_sizes_the_rounds(tmp_path: Path) -> None:
    rows_in = {}
    for oversample in (None, 1.0):
        result = run(tmp_path / str(oversample), ScriptedTeacher(), samples_per_leaf=9, oversample=oversample)
        freeform = next(leaf for leaf in result.leaves if leaf.leaf.kind == "freeform_skill")
        assert len(freeform.train) == 9  # honoured either way
        rows_in[oversample] = freeform.stats.stages["gen_question"].rows_in
    assert rows_in == {None: 20, 1.0: 10}  # 9 + 1 held out, times the pipeline's 2.0 or 1.0
