"""Blocks one by one: parsing, filtering, dedup and melting, with every drop counted."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from labalign.errors import LabalignError
from labalign.llm.types import LLMRequest
from labalign.sdg.blocks import (
    BlockContext,
    DedupBlockConfig,
    FilterBlockConfig,
    LLMBlockConfig,
    MeltBlockConfig,
    ParseBlockConfig,
    run_block,
)
from labalign.sdg.dedup import NearDuplicateIndex
from labalign.sdg.pipeline import builtin_pipeline, load_pipeline
from labalign.sdg.prompts import PromptLibrary
from labalign.sdg.rows import Row
from labalign.sdg.stats import LeafStats
from labalign.textmetrics import rouge_l, tokens
from tests.sdg_fakes import ScriptedTeacher


def ctx(seeds: dict[str, list[str]] | None = None) -> BlockContext:
    teacher = ScriptedTeacher()
    return BlockContext(
        leaf="l",
        teacher=teacher,
        judge=teacher,
        prompts=PromptLibrary(),
        stats=LeafStats("l"),
        seed=1,
        chat=False,
        seed_texts=seeds or {},
    )


def rows(*values: dict[str, object]) -> list[Row]:
    return [{"_id": f"r{i}", **v} for i, v in enumerate(values)]


def test_parse_first_match_and_all_matches() -> None:
    c = ctx()
    block = ParseBlockConfig(name="p", type="parse", input="raw", pattern=r"(?P<score>[0-3])")
    out = asyncio.run(run_block(block, rows({"raw": " 2\n"}, {"raw": "none"}, {"raw": "3 or 1"}), c))
    assert [r["score"] for r in out] == ["2", "3"]
    assert c.stats.stage("p").dropped == {"unparseable": 1}
    qa = ParseBlockConfig(
        name="qa",
        type="parse",
        input="raw",
        prefix="[Question]\n",
        all_matches=True,
        pattern=r"\[Question\]\s*(?P<question>[^\[]+?)\s*\[Answer\]\s*(?P<answer>[^\[]+?)\s*(?=\[Question\]|\[End\]|$)",
    )
    out = asyncio.run(
        run_block(qa, rows({"raw": "Q1?\n[Answer]\nA1.\n[Question]\nQ2?\n[Answer]\nA2.\n[End]"}), c)
    )
    assert [(r["question"], r["answer"]) for r in out] == [("Q1?", "A1."), ("Q2?", "A2.")]
    assert len({r["_id"] for r in out}) == 2


def test_filter_converts_and_counts_reasons() -> None:
    c = ctx()
    block = FilterBlockConfig(name="f", type="filter", column="s", op="ge", value=2, convert="int")
    out = asyncio.run(run_block(block, rows({"s": "3"}, {"s": "1"}, {"s": "x"}, {"s": " 2 "}), c))
    assert [r["s"] for r in out] == ["3", " 2 "]
    assert c.stats.stage("f").dropped == {"s=1": 1, "unparseable_value": 1}
    upper = FilterBlockConfig(name="u", type="filter", column="v", op="eq", value="YES", convert="upper")
    assert len(asyncio.run(run_block(upper, rows({"v": "yes"}, {"v": "No"}), c))) == 1


def test_dedup_against_kept_and_seeds() -> None:
    c = ctx({"question": ["What year was the lighthouse built?"]})
    block = DedupBlockConfig(name="d", type="dedup", column="question", threshold=0.7)
    out = asyncio.run(
        run_block(
            block,
            rows(
                {"question": "In what year was the lighthouse built?"},
                {"question": "Who founded the harbour guild of Saltmere?"},
                {"question": "Who founded the harbour guild in Saltmere?"},
                {"question": "Name the three rivers of the island."},
            ),
            c,
        )
    )
    assert [r["question"] for r in out] == [
        "Who founded the harbour guild of Saltmere?",
        "Name the three rivers of the island.",
    ]
    assert c.stats.stage("d").dropped == {"copies_seed": 1, "near_duplicate": 1}


def test_rouge_l_values() -> None:
    assert rouge_l(tokens("the cat sat"), tokens("the cat sat")) == 1.0
    assert rouge_l(tokens("a b c d"), tokens("a c d e")) == pytest.approx(0.75)
    assert rouge_l([], tokens("x")) == 0.0
    index = NearDuplicateIndex(0.7)
    index.add("one two three four five six")
    assert index.find("ONE two three four five six!") == 0 and index.find("seven eight") is None


def test_melt_and_optional_llm_output() -> None:
    c = ctx()
    melt = MeltBlockConfig(name="m", type="melt", columns=["chunk", "summary"], output="context")
    out = asyncio.run(
        run_block(melt, rows({"chunk": "c", "summary": "s"}, {"chunk": "c2", "summary": ""}), c)
    )
    assert [(r["context"], r["context_kind"]) for r in out] == [
        ("c", "chunk"),
        ("s", "summary"),
        ("c2", "chunk"),
    ]

    class Failing(ScriptedTeacher):
        def answer(self, request: LLMRequest) -> str:
            return ""

    c.teacher = Failing()
    optional = LLMBlockConfig(
        name="o", type="llm", prompt="knowledge_summary.j2", output="summary", required=False
    )
    kept = asyncio.run(run_block(optional, rows({"chunk": "text", "domain": "d"}), c))
    assert kept == [{"_id": "r0", "chunk": "text", "domain": "d"}]
    assert c.stats.stage("o").kept_without_output == {"empty_output": 1}
    required = LLMBlockConfig(name="r", type="llm", prompt="knowledge_summary.j2", output="summary")
    assert asyncio.run(run_block(required, rows({"chunk": "text", "domain": "d"}), c)) == []
    assert c.stats.stage("r").dropped == {"empty_output": 1}


def test_llm_block_n_choices_make_distinct_rows_and_requests() -> None:
    c = ctx()
    block = LLMBlockConfig(name="g", type="llm", prompt="knowledge_summary.j2", output="summary", n=3)
    out = asyncio.run(run_block(block, rows({"chunk": "text", "domain": "d"}), c))
    assert len(out) == 3 and len({r["_id"] for r in out}) == 3 and len({r["summary"] for r in out}) == 3


def test_builtin_pipelines_load() -> None:
    for kind in ("freeform_skill", "grounded_skill", "knowledge"):
        assert builtin_pipeline(kind).config.kind == kind


def test_user_pipeline_errors_point_at_the_block(tmp_path: Path) -> None:
    text = (Path(builtin_pipeline("freeform_skill").path)).read_text()
    bad = tmp_path / "p.yaml"
    bad.write_text(text.replace("    op: ge\n", "    op: greater\n"))
    with pytest.raises(LabalignError) as info:
        load_pipeline(bad)
    assert info.value.path == str(bad) and info.value.line is not None
    assert "op" in str(info.value)
    missing = tmp_path / "m.yaml"
    missing.write_text(text.replace("prompt: skill_answer.j2", "prompt: nope.j2"))
    with pytest.raises(LabalignError, match=r"nope\.j2"):
        load_pipeline(missing)
    no_answer = tmp_path / "n.yaml"
    no_answer.write_text(text.replace("(?P<answer>", "(?P<reply>"))
    with pytest.raises(LabalignError, match="answer"):
        load_pipeline(no_answer)


def test_user_pipeline_uses_its_own_prompt_folder(tmp_path: Path) -> None:
    text = builtin_pipeline("freeform_skill").path.read_text().replace("skill_answer.j2", "mine.j2")
    (tmp_path / "p.yaml").write_text(text)
    (tmp_path / "mine.j2").write_text("Q: {{ question }}\nA:")
    pipeline = load_pipeline(tmp_path / "p.yaml")
    assert pipeline.prompts.render("mine.j2", {"question": "why?"}) == "Q: why?\nA:"
