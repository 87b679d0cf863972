"""Property tests: no input makes the loader raise anything but our own error type."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labalign import yamlsafe
from labalign.taxonomy import ValidationOptions
from labalign.taxonomy.discover import TaxonomyFile
from labalign.taxonomy.validate import validate_file
from tests.taxonomy_fixtures import SKILL, knowledge

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))
keys = st.sampled_from(
    [
        "version",
        "created_by",
        "task_description",
        "seed_examples",
        "question",
        "answer",
        "context",
        "domain",
        "document",
        "repo",
        "commit",
        "patterns",
        "questions_and_answers",
        "document_outline",
        "x",
    ]
)
trees: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(keys, inner, max_size=7),
    max_leaves=40,
)


def _validate_text(text: str | bytes, rel: str = "compositional_skills/fuzz/qna.yaml") -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        path = root / rel
        path.parent.mkdir(parents=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
        opts = ValidationOptions(cache_dir=root / "cache", offline=True)
        report, leaf = validate_file(TaxonomyFile(path, root), opts, lambda s: len(s.split()))
        for p in report.problems:
            assert p.line >= 1 and p.column >= 1 and p.yaml_path.startswith(".")
        assert (leaf is None) or not report.errors


@FUZZ
@given(st.text(max_size=300))
def test_parse_raises_only_yaml_error(text: str) -> None:
    with contextlib.suppress(yamlsafe.YamlError):
        yamlsafe.parse(text, path="fuzz.yaml")


@FUZZ
@given(trees, st.sampled_from(["compositional_skills/f/qna.yaml", "knowledge/f/qna.yaml", "other/qna.yaml"]))
def test_validate_never_raises_on_structures(tree: Any, rel: str) -> None:
    _validate_text(yaml.safe_dump(tree), rel)


@FUZZ
@given(
    st.sampled_from([SKILL, knowledge()]),
    st.lists(
        st.tuples(
            st.integers(0, 2000), st.integers(0, 5), st.text(alphabet=" \t\n:-[]{}&*!|>'\"#%@`,?", max_size=4)
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_validate_never_raises_on_mutated_files(base: str, edits: list[tuple[int, int, str]]) -> None:
    text = base
    for pos, cut, insert in edits:
        pos %= len(text) + 1
        text = text[:pos] + insert + text[pos + cut :]
    rel = "knowledge/f/qna.yaml" if "document" in base else "compositional_skills/f/qna.yaml"
    _validate_text(text, rel)


@FUZZ
@given(st.binary(max_size=200))
def test_validate_never_raises_on_bytes(data: bytes) -> None:
    _validate_text(data)


@pytest.mark.parametrize("version", [float("inf"), float("-inf"), float("nan"), "3x", None])
def test_a_version_that_is_no_integer_is_reported_not_raised(version: Any) -> None:
    # Found by the fuzzer: `version: .inf` made int() raise OverflowError.
    _validate_text(yaml.safe_dump({"version": version}), "compositional_skills/f/qna.yaml")
