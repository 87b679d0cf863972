"""Knowledge leaves also train on their whole document: one record per chunk, with the chunk verbatim."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from labalign.config import load_settings
from labalign.sdg.driver import leaf_inputs
from labalign.sdg.generate import GenerateOptions, generate
from labalign.sdg.mix import document_records
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
