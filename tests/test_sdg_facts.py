"""Fact questions: every document sentence becomes the answer to a teacher-written question."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from rich.console import Console

from labalign.config import load_settings
from labalign.documents.prose import paragraphs, sentences
from labalign.llm.types import LLMRequest
from labalign.sdg.blocks import BlockContext, SimilarityBlockConfig, run_block
from labalign.sdg.driver import funnel_table, leaf_inputs
from labalign.sdg.facts import FACT_ID, fact_examples, fact_rows
from labalign.sdg.generate import GenerateOptions, GenerateResult, LeafInput, generate
from labalign.sdg.pipeline import builtin_pipeline
from labalign.sdg.prompts import PromptLibrary
from labalign.sdg.rows import ROW_ID, Row
from labalign.sdg.stats import GenerationStats, LeafStats
from labalign.taxonomy import ValidationOptions, load_leaves
from tests.sdg_fakes import ScriptedTeacher, prompt_text

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "taxonomy"

CHUNK = """# Island

## History

In 912 Aelric Manso landed in Dunmorrow Bay with seven boats. He built a hall at St Brannoc's
well, and c. 1200 the hall burned. "It was rebuilt," wrote the abbot. Short one. He said "go
west to the harbour." J. Pellow went there at once.

| Year | Event |
|---|---|
| 912 | Landing of the seven boats |

- The first list item has enough words in it.
- Tiny.
- 1911 — the Great Fall at the Deepcut pit kills
  twenty-three workers on a summer afternoon.
- "tarn" — a small upland lake, common on the northern moors.

```
Code is not prose. It is left out entirely here.
```
"""


def test_paragraphs_leave_out_headings_tables_and_code() -> None:
    found = paragraphs(CHUNK)
    assert found[0].startswith("In 912") and "St Brannoc's well, and c. 1200" in found[0]
    assert not any("|" in p or "Code" in p or p.startswith("#") for p in found)
    assert "The first list item has enough words in it." in found


def test_sentences_split_at_real_ends_only() -> None:
    assert sentences(CHUNK) == [
        "In 912 Aelric Manso landed in Dunmorrow Bay with seven boats.",
        "He built a hall at St Brannoc's well, and c. 1200 the hall burned.",
        '"It was rebuilt," wrote the abbot.',
        'He said "go west to the harbour."',
        "J. Pellow went there at once.",
        "The first list item has enough words in it.",
    ]


def test_examples_pair_each_seed_question_with_its_sentence() -> None:
    leaf = load_leaves([EXAMPLES], ValidationOptions(check_documents=False))
    knowledge = next(x for x in leaf if x.kind == "knowledge")
    examples = fact_examples(knowledge)
    assert len(examples) >= 8
    peak = next(e for e in examples if e["question"].startswith("In which year did slate production peak"))
    assert peak["fact"].startswith("Production peaked in 1871 at 46,000 tonnes")
    assert peak["before"].startswith("To carry the slate to the harbour")
    for e in examples:
        seed = knowledge.seed_examples[e["index"]]
        assert seed.context and e["fact"] in " ".join(seed.context.split())


def test_rows_cover_every_sentence_with_seeded_examples() -> None:
    s = load_settings(overrides={"sdg.max_chunks": 3})
    job = next(
        j
        for j in leaf_inputs(load_leaves([EXAMPLES], ValidationOptions(check_documents=False)), s)
        if j.chunks
    )
    rows = fact_rows(job.leaf, job.chunks, seed=1, examples_per_prompt=3)
    assert [r["fact"] for r in rows] == [x for c in job.chunks for x in sentences(c.text)]
    assert all(r["answer"] == r["fact"] and len(r["examples"]) == 3 for r in rows)
    assert len({r[ROW_ID] for r in rows}) == len(rows)
    again = fact_rows(job.leaf, job.chunks, seed=1, examples_per_prompt=3)
    assert [r["examples"] for r in again] == [r["examples"] for r in rows]
    assert rows[1]["before"] == rows[0]["fact"] or rows[1]["chunk_index"] != rows[0]["chunk_index"]
    prompt = builtin_pipeline("knowledge_facts").prompts.render("knowledge_fact_question.j2", rows[1])
    assert prompt.rstrip().endswith(f"[Fact]\n{rows[1]['fact']}\n[Question]")
    assert rows[1]["examples"][0]["question"] in prompt


@pytest.mark.parametrize(
    ("question", "kept", "reason"),
    [
        ("In what year did Aelric Manso land in Dunmorrow Bay?", True, ""),
        ("What is the capital of France?", False, "rouge_l<0.1"),
        ("In 912 Aelric Manso landed in Dunmorrow Bay with seven boats?", False, "rouge_l>0.8"),
    ],
)
def test_similarity_block_keeps_questions_about_the_fact(question: str, kept: bool, reason: str) -> None:
    stats = LeafStats("leaf")
    ctx = BlockContext("leaf", ScriptedTeacher(), ScriptedTeacher(), PromptLibrary([]), stats, 0, False)
    config = SimilarityBlockConfig(
        name="overlap", type="similarity", a="question", b="answer", min=0.1, max=0.8, output="score"
    )
    row = {ROW_ID: "r", "question": question, "answer": "In 912 Aelric Manso landed in Dunmorrow Bay."}
    out = asyncio.run(run_block(config, [row], ctx))
    assert bool(out) == kept
    if kept:
        assert 0.1 <= out[0]["score"] <= 0.8
    else:
        assert dict(stats.stages["overlap"].dropped) == {reason: 1}


def test_generate_trains_on_fact_questions_in_phase1_only(tmp_path: Path) -> None:
    s = load_settings(overrides={"sdg.max_chunks": 2})
    jobs = leaf_inputs(load_leaves([EXAMPLES], ValidationOptions(check_documents=False)), s)
    n_sentences = sum(len(sentences(c.text)) for j in jobs for c in j.chunks)
    counts = {}
    for flag in (True, False):
        out = tmp_path / str(flag)
        options = GenerateOptions(samples_per_leaf=2, seed=1, fact_questions=flag)
        asyncio.run(generate(jobs, teacher=ScriptedTeacher(), out_dir=out, options=options))
        phase1 = [json.loads(line) for line in (out / "phase1.jsonl").read_text().splitlines()]
        phase2 = [json.loads(line) for line in (out / "phase2.jsonl").read_text().splitlines()]
        facts = [r for r in phase1 if r["metadata"]["variant"] == "fact"]
        counts[flag] = len(facts)
        assert not any(r["metadata"]["variant"] == "fact" and not r["metadata"].get("replay") for r in phase2)
        stats = json.loads((out / "stats.json").read_text())
        knowledge = next(leaf for leaf in stats["leaves"] if leaf["leaf"].startswith("knowledge/"))
        assert knowledge["facts"] == len(facts) and knowledge["kept"] >= len(facts)
        for rec in facts:
            question, answer = rec["messages"][0]["content"], rec["messages"][1]["content"]
            assert question.endswith("?") and answer in {
                x for j in jobs for c in j.chunks for x in sentences(c.text)
            }
            assert rec["metadata"]["pipeline"] == "knowledge_facts"
            assert rec["metadata"]["document"]["chunk_index"] is not None
        if flag:
            stages = {st["block"]: st for st in knowledge["stages"]}
            assert stages["fact_question"]["in"] == n_sentences
    assert counts[False] == 0 and counts[True] > 0.5 * n_sentences


def test_without_knowledge_qa_the_knowledge_leaf_gets_fact_questions_only(tmp_path: Path) -> None:
    s = load_settings(overrides={"sdg.max_chunks": 2})
    jobs = leaf_inputs(load_leaves([EXAMPLES], ValidationOptions(check_documents=False)), s)
    options = GenerateOptions(samples_per_leaf=2, seed=1, knowledge_qa=False, document_records=False)
    result = asyncio.run(generate(jobs, teacher=ScriptedTeacher(), out_dir=tmp_path, options=options))
    knowledge = next(leaf for leaf in result.leaves if leaf.leaf.kind == "knowledge")
    assert knowledge.train == [] and knowledge.stats.rounds == 0 and knowledge.facts
    assert "gen_qa" not in knowledge.stats.stages
    phase1 = [json.loads(line) for line in (tmp_path / "phase1.jsonl").read_text().splitlines()]
    assert {r["metadata"]["variant"] for r in phase1} == {"fact"}
    skills = [leaf for leaf in result.leaves if leaf.leaf.kind != "knowledge"]
    assert all(len(leaf.train) == 2 for leaf in skills)  # skills are not affected


class _FailsFor(ScriptedTeacher):
    """Writes an unparseable "question" about `facts` for the first `failures` sampling seeds of each
    (2: both choices of the first round), or always (None)."""

    def __init__(self, facts: set[str], failures: int | None = 2) -> None:
        super().__init__()
        self.facts = facts
        self.failures = failures
        self.failed: dict[str, set[int | None]] = {}

    def answer(self, request: LLMRequest) -> str:
        text = prompt_text(request).rstrip()
        if "[Fact]" in text and text.endswith("[Question]"):
            fact = text[text.rindex("[Fact]") + len("[Fact]") : text.rindex("[Question]")].strip()
            seeds = self.failed.setdefault(fact, set())
            fresh = self.failures is None or len(seeds) < self.failures
            if fact in self.facts and (fresh or request.params.seed in seeds):
                seeds.add(request.params.seed)
                return "no question here\n"
        return super().answer(request)


def _facts_of_one_chunk() -> tuple[LeafInput, list[Row]]:
    """The example knowledge leaf's first chunk, and its fact rows."""
    s = load_settings(overrides={"sdg.max_chunks": 1})
    jobs = leaf_inputs(load_leaves([EXAMPLES], ValidationOptions(check_documents=False)), s)
    job = next(j for j in jobs if j.leaf.kind == "knowledge")
    return job, fact_rows(job.leaf, job.chunks, seed=1, examples_per_prompt=3)


def _generate_facts(job: LeafInput, teacher: ScriptedTeacher, out: Path) -> GenerateResult:
    options = GenerateOptions(samples_per_leaf=2, seed=1, knowledge_qa=False, document_records=False)
    return asyncio.run(generate([job], teacher=teacher, out_dir=out, options=options))


def test_sentences_without_a_question_are_asked_again_with_new_seeds(tmp_path: Path) -> None:
    job, rows = _facts_of_one_chunk()
    teacher = _FailsFor({rows[0]["fact"], rows[2]["fact"]})
    result = _generate_facts(job, teacher, tmp_path)
    # Both first-round choices about two sentences failed: those two were asked again (2 rows more),
    # with new seeds, and every sentence ends up with a question.
    stats = result.leaves[0].stats
    assert stats.stages["fact_question"].rows_in == len(rows) + 2
    assert stats.stages["parse_fact_question"].dropped["unparseable"] == 4
    kept = result.leaves[0].facts
    assert {r[FACT_ID] for r in kept} == {r[FACT_ID] for r in rows}
    retried = [r for r in kept if r["round"] == 1]
    assert {r["fact"] for r in retried} == teacher.facts
    assert all(r[ROW_ID].split("/")[-3] == "r1" for r in retried)
    assert all(len(seeds) == 2 for fact, seeds in teacher.failed.items() if fact in teacher.facts)


def test_sentences_left_without_a_question_are_counted_and_named(tmp_path: Path) -> None:
    job, rows = _facts_of_one_chunk()
    result = _generate_facts(job, _FailsFor({rows[1]["fact"]}, failures=None), tmp_path)
    stats = result.leaves[0].stats
    assert stats.fact_sentences == len(rows) and stats.unasked_facts == [rows[1]["fact"]]
    written = json.loads((tmp_path / "stats.json").read_text())["leaves"][0]
    assert written["unasked_facts"] == [rows[1]["fact"]]
    table = Console(width=200, record=True)
    table.print(funnel_table(GenerationStats.load(tmp_path)))
    assert f"on {len(rows) - 1} of {len(rows)} sentences" in table.export_text()
