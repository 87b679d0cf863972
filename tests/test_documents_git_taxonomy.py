"""A knowledge leaf whose document lives in a git repository (InstructLab's layout: `repo:` a URL,
`commit:` a sha) gives the same training data and the same evaluation items as the same document
kept beside the leaf."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from labalign.config import load_settings
from labalign.evaluate import suite
from labalign.sdg.driver import leaf_inputs
from labalign.sdg.generate import GenerateOptions, generate
from labalign.taxonomy import ValidationOptions, load_leaves
from tests.sdg_fakes import ScriptedTeacher
from tests.test_documents_fetch import GIT_ENV, commit_all, git

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "taxonomy"
LEAF = Path("knowledge/history/quillmarrow_island")


@pytest.fixture(autouse=True)
def _git_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in GIT_ENV.items():
        monkeypatch.setenv(key, value)


def git_taxonomy(tmp_path: Path) -> Path:
    """The example's knowledge leaf, its document moved into a git repository named by file:// URL."""
    source = tmp_path / "island-docs"
    source.mkdir()
    git(source, "init", "-q")
    shutil.copy(EXAMPLES / LEAF / "quillmarrow_island.md", source / "quillmarrow_island.md")
    sha = commit_all(source, "the island")
    root = tmp_path / "taxonomy"
    (root / LEAF).mkdir(parents=True)
    qna = (EXAMPLES / LEAF / "qna.yaml").read_text(encoding="utf-8")
    local_block = qna[qna.index("document:") :]
    assert "repo: ." in local_block and "commit: local" in local_block
    block = local_block.replace("repo: .", f"repo: {source.as_uri()}").replace(
        "commit: local", f"commit: {sha}"
    )
    (root / LEAF / "qna.yaml").write_text(qna.replace(local_block, block), encoding="utf-8")
    return root


def records(taxonomy: Path, out: Path, cache: Path) -> list[dict[str, object]]:
    # A file:// repository is a folder on this machine, so it must be allowed as one (trust boundary);
    # an https:// or ssh repository is fetched the same way without that.
    allowed = [str(out.parent / "island-docs")]
    s = load_settings(
        overrides={"sdg.max_chunks": 3, "cache_dir": str(cache), "documents.allowed_roots": allowed}
    )
    jobs = leaf_inputs(load_leaves([taxonomy], ValidationOptions(check_documents=False)), s)
    jobs = [job for job in jobs if job.leaf.name == str(LEAF)]
    asyncio.run(
        generate(jobs, teacher=ScriptedTeacher(), out_dir=out, options=GenerateOptions(samples_per_leaf=4))
    )
    rows = [json.loads(line) for line in (out / "phase1.jsonl").read_text().splitlines()]
    return [{"messages": r["messages"], "variant": r["metadata"]["variant"]} for r in rows]


def test_a_git_document_trains_and_evaluates_like_a_local_one(tmp_path: Path) -> None:
    remote = git_taxonomy(tmp_path)
    cache = tmp_path / "cache"
    local_data = records(EXAMPLES, tmp_path / "local", cache)
    git_data = records(remote, tmp_path / "git", cache)
    assert git_data == local_data and len(git_data) > 10
    assert any(cache.rglob("repo.git"))  # fetched into the cache

    # The knowledge evaluations read the same chunks, so they build the same items.
    allowed = [str(tmp_path / "island-docs")]
    settings = load_settings(overrides={"cache_dir": str(cache), "documents.allowed_roots": allowed})
    plan = suite.EvalPlan(model="m", base="b", judge=None, taxonomy=remote, out=tmp_path / "eval")
    _, remote_chunks = suite._knowledge_leaves(plan, settings)
    _, local_chunks = suite._knowledge_leaves(
        suite.EvalPlan(model="m", base="b", judge=None, taxonomy=EXAMPLES, out=tmp_path / "eval"), settings
    )
    assert [c.text for c in remote_chunks[str(LEAF)]] == [c.text for c in local_chunks[str(LEAF)]]
