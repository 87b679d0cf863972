"""Knowledge leaves also train on their whole document: one record per chunk, with the chunk verbatim."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from labalign.config import load_settings
from labalign.sdg.driver import leaf_inputs
from labalign.sdg.generate import GenerateOptions, generate
from labalign.sdg.mix import document_records, seed_records
from labalign.taxonomy import ValidationOptions, load_leaves
from tests.sdg_fakes import ScriptedTeacher

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "taxonomy"


def test_one_record_per_chunk_with_its_heading() -> None:
    s = load_settings(overrides={"sdg.max_chunks": 5})
    job = next(
        j
        for j in leaf_inputs(load_leaves([EXAMPLES], ValidationOptions(check_documents=False)), s)
        if j.chunks
    )
    records = document_records(job.chunks, {"leaf": job.leaf.name, "kind": "knowledge"}, "Be brief.")
    assert len(records) == len(job.chunks) == 5
    for rec, chunk in zip(records, job.chunks, strict=True):
        system, user, assistant = rec["messages"]
        assert system == {"role": "system", "content": "Be brief."}
        assert assistant["content"] == chunk.text.strip()
        assert chunk.heading_path[0] in user["content"]
        assert rec["metadata"]["variant"] == "document" and rec["metadata"]["chunk_index"] == chunk.index
    assert len({r["id"] for r in records}) == 5


def test_generate_adds_them_to_phase1_only_when_asked(tmp_path: Path) -> None:
    s = load_settings(overrides={"sdg.max_chunks": 3})
    jobs = leaf_inputs(load_leaves([EXAMPLES], ValidationOptions(check_documents=False)), s)
    counts = {}
    for flag in (True, False):
        out = tmp_path / str(flag)
        options = GenerateOptions(samples_per_leaf=2, seed=1, document_records=flag)
        asyncio.run(generate(jobs, teacher=ScriptedTeacher(), out_dir=out, options=options))
        phase1 = [json.loads(line) for line in (out / "phase1.jsonl").read_text().splitlines()]
        counts[flag] = sum(1 for r in phase1 if r["metadata"]["variant"] == "document")
    assert counts == {True: 3, False: 0}


def test_pretraining_records_are_the_chunks_as_plain_text(tmp_path: Path) -> None:
    s = load_settings(overrides={"sdg.max_chunks": 3})
    jobs = leaf_inputs(load_leaves([EXAMPLES], ValidationOptions(check_documents=False)), s)
    out = tmp_path / "out"
    options = GenerateOptions(samples_per_leaf=2, seed=1, document_records=False, document_pretraining=True)
    asyncio.run(generate(jobs, teacher=ScriptedTeacher(), out_dir=out, options=options))
    phase1 = [json.loads(line) for line in (out / "phase1.jsonl").read_text().splitlines()]
    plain = [r for r in phase1 if r["metadata"]["variant"] == "document:pretraining"]
    chunks = next(j.chunks for j in jobs if j.chunks)
    assert sorted(r["messages"][0]["content"] for r in plain) == sorted(c.text.strip() for c in chunks)
    assert all(len(r["messages"]) == 1 and r["messages"][0]["role"] == "pretraining" for r in plain)


def test_seed_records_follow_the_leaf_kind() -> None:
    leaves = {leaf.kind: leaf for leaf in load_leaves([EXAMPLES], ValidationOptions(check_documents=False))}
    knowledge = seed_records(leaves["knowledge"], "", context_variant=True)
    pairs = sum(len(s.qna) for s in leaves["knowledge"].seed_examples)
    assert len(knowledge) == 2 * pairs  # closed book and with the seed's context
    assert {r["metadata"]["variant"] for r in knowledge} == {"closed_book", "context_in_prompt"}
    first = leaves["knowledge"].seed_examples[0]
    assert knowledge[0]["messages"][0]["content"] == first.qna[0].question
    assert knowledge[0]["messages"][1]["content"] == first.qna[0].answer
    assert first.context and first.context.strip() in knowledge[1]["messages"][0]["content"]
    grounded = seed_records(leaves["grounded_skill"], "", context_variant=True)
    assert len(grounded) == len(leaves["grounded_skill"].seed_examples)
    assert all(r["metadata"]["source"] == "seed" for r in grounded)
    ctx = leaves["grounded_skill"].seed_examples[0].context
    assert ctx and ctx.strip() in grounded[0]["messages"][0]["content"]
