"""General replay text from the base student: requests, records, the shipped openings, resume."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from labalign.errors import LabalignError
from labalign.evaluate.forgetting import load_documents
from labalign.llm.cache import CachedBackend
from labalign.llm.types import LLMRequest
from labalign.sdg.general_replay import (
    Opening,
    ReplayOptions,
    build_general_replay,
    load_openings,
    replay_requests,
)
from labalign.sdg.generate import write_jsonl
from labalign.train.data import read_samples
from tests.llm_fakes import RuleBackend


def _continuation(request: LLMRequest) -> str:
    if "short" in (request.prompt or ""):
        return "  "
    return f" and then the text goes on for a while, sample {request.sample_index} of it."


def test_shipped_openings_are_varied_and_not_the_forgetting_text() -> None:
    openings = load_openings()
    assert len(openings) >= 100 and len({o.id for o in openings}) == len(openings)
    assert len({o.style for o in openings}) >= 10
    general = " ".join(d.text for d in load_documents()).lower()
    for o in openings:
        assert o.text.lower() not in general


def test_requests_are_raw_completions_sampled_at_temperature_one() -> None:
    openings = [Opening("o1", "news", "A"), Opening("o2", "story", "B")]
    requests = replay_requests(openings, ReplayOptions(samples_per_opening=3, max_tokens=50, seed=1))
    assert len(requests) == 6 and all(not r.is_chat and r.params.temperature == 1.0 for r in requests)
    assert len({r.cache_key("m") for r in requests}) == 6  # each sample its own answer
    again = replay_requests(openings, ReplayOptions(samples_per_opening=3, max_tokens=50, seed=1))
    assert [r.cache_key("m") for r in again] == [r.cache_key("m") for r in requests]
    other = replay_requests(openings, ReplayOptions(samples_per_opening=3, max_tokens=50, seed=2))
    assert {r.cache_key("m") for r in other}.isdisjoint(r.cache_key("m") for r in requests)


def test_records_are_pretraining_text_the_trainer_reads(tmp_path: Path) -> None:
    openings = [Opening("opening-001", "news", "The council met."), Opening("opening-002", "x", "short")]
    backend = RuleBackend(_continuation, identity="base:v1")
    seen: list[tuple[int, int]] = []
    records, failed = asyncio.run(
        build_general_replay(
            backend,
            openings,
            ReplayOptions(samples_per_opening=2),
            on_progress=lambda d, t: seen.append((d, t)),
        )
    )
    assert failed == 0 and seen[-1] == (4, 4)
    assert [r["id"] for r in records] == ["opening-001-0", "opening-001-1"]  # the empty ones are left out
    assert records[0]["messages"][0]["content"].startswith("The council met. and then")
    assert records[0]["metadata"]["model"] == "base:v1"
    path = tmp_path / "replay.jsonl"
    write_jsonl(path, records)
    samples = read_samples(path)
    assert [s.is_pretraining for s in samples] == [True, True]
    assert json.loads(path.read_text().splitlines()[0])["metadata"]["source"] == "general_replay"


def test_a_second_build_is_answered_from_the_cache(tmp_path: Path) -> None:
    openings = load_openings()[:5]
    first = CachedBackend(RuleBackend(_continuation), tmp_path / "cache.sqlite")
    records, _ = asyncio.run(build_general_replay(first, openings, ReplayOptions()))
    inner = RuleBackend(_continuation)
    second = CachedBackend(inner, tmp_path / "cache.sqlite")
    again, _ = asyncio.run(build_general_replay(second, openings, ReplayOptions()))
    assert again == records and inner.seen == []


def test_bad_openings_file_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    path.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": ""}\n')
    with pytest.raises(LabalignError) as err:
        load_openings(path)
    assert err.value.line == 2


def test_the_shipped_replay_is_what_the_quick_profile_would_write_for_the_embedded_student() -> None:
    """Stale when the openings, the quick profile's replay parameters or the embedded model change:
    rerun tools/ship_general_replay.py (until then every first run writes its own, about 6 minutes)."""
    from labalign.config import load_settings
    from labalign.llm.default_model import _module_or_none
    from labalign.run.profiles import get_profile
    from labalign.sdg.general_replay import shipped_key, shipped_paths

    module = _module_or_none()
    assert module is not None, "the embedded model's package is a dependency"
    records_path, key_path = shipped_paths(module.EXPECTED_SHA256)
    options = ReplayOptions.from_settings(load_settings(defaults=get_profile("quick").settings))
    assert json.loads(key_path.read_text())["key"] == shipped_key(module.EXPECTED_SHA256, options)
    assert len(read_samples(records_path)) == len(load_openings()) * options.samples_per_opening
    texts = [json.loads(line)["messages"][0]["content"] for line in records_path.read_text().splitlines()]
    general = " ".join(d.text for d in load_documents()).lower()
    assert all(text.lower() not in general for text in texts)


def _student_with_marker(tmp_path: Path, sha: str) -> Path:
    student = tmp_path / "student"
    student.mkdir(parents=True)
    (student / "labalign-conversion.json").write_text(json.dumps({"gguf_sha256": sha}))
    return student  # no weights: using them would fail


def test_a_run_takes_the_shipped_text_only_for_the_student_and_parameters_it_was_written_with(
    tmp_path: Path,
) -> None:
    from labalign.llm.default_model import _module_or_none
    from labalign.sdg.general_replay import generate_general_replay, shipped_replay

    module = _module_or_none()
    assert module is not None
    student = _student_with_marker(tmp_path, module.EXPECTED_SHA256)
    options = ReplayOptions(samples_per_opening=1, max_tokens=160, seed=42)
    out = tmp_path / "replay.jsonl"
    counts = generate_general_replay(
        student, out, cache_path=tmp_path / "c.sqlite", options=options, batch_size=8
    )
    assert counts.shipped and counts.misses == 0 and counts.records == len(read_samples(out)) > 100
    assert shipped_replay(student, ReplayOptions(samples_per_opening=1, max_tokens=160, seed=1)) is None
    assert shipped_replay(student, ReplayOptions(samples_per_opening=2, max_tokens=160, seed=42)) is None
    assert shipped_replay(_student_with_marker(tmp_path / "other", "0" * 64), options) is None
    # Other openings, or the shipped text turned off: the base writes its own (here: no weights to load).
    with pytest.raises(LabalignError, match="not a Hugging Face model directory"):
        generate_general_replay(
            student, out, cache_path=tmp_path / "c.sqlite", options=options, batch_size=8, use_shipped=False
        )
