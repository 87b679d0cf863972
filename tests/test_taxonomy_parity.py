"""Our error/no-error verdict equals InstructLab's own parser (`instructlab-schema`) on any input.

InstructLab's parser is run with its yamllint step switched off (it shells out to the yamllint
command; our lint findings are warnings by design) and we run without document resolution, so what is
compared is exactly the YAML reading plus the published schemas.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from instructlab.schema.taxonomy import TaxonomyParser, TaxonomyReadingException

from labalign.taxonomy import ValidationOptions
from labalign.taxonomy.discover import TaxonomyFile
from labalign.taxonomy.validate import validate_file
from tests.taxonomy_fixtures import SKILL, knowledge
from tests.test_taxonomy_fuzz import trees

logging.getLogger("instructlab.schema").setLevel(logging.CRITICAL)
PARITY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RELS = ["compositional_skills/a/qna.yaml", "knowledge/a/qna.yaml", "loose/qna.yaml"]


def _instructlab_verdict(path: Path) -> tuple[bool, bool]:
    parser = TaxonomyParser(schema_version=0, message_format="logging")
    parser._yamllint = lambda text, taxonomy: None  # type: ignore[method-assign]
    parser.yq_available = False  # it would shell out to `yq` once per error just to find a line
    try:
        taxonomy = parser.parse(path)
    except TaxonomyReadingException:
        return True, False
    return taxonomy.errors > 0, taxonomy.warnings > 0


def _our_verdict(path: Path, root: Path) -> tuple[bool, bool]:
    options = ValidationOptions(check_documents=False, cache_dir=root / "cache")
    report, _ = validate_file(TaxonomyFile(path, root), options, lambda s: 0)
    schema_warnings = [p for p in report.warnings if p.message == "the file is empty"]
    return bool(report.errors), bool(schema_warnings)


def _compare(text: str | bytes, rel: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        path = root / rel
        path.parent.mkdir(parents=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
        ours = _our_verdict(path, root)
        theirs = _instructlab_verdict(path)
        assert ours == theirs, f"ours (errors, empty-warning)={ours}, InstructLab's={theirs}:\n{text!r}"


@PARITY
@given(trees, st.sampled_from(RELS))
def test_parity_on_structures(tree: Any, rel: str) -> None:
    _compare(yaml.safe_dump(tree), rel)


def _near_valid() -> st.SearchStrategy[str]:
    """Valid files with one key removed, retyped or added: the mutations real authors make."""
    bases = [yaml.safe_load(SKILL), yaml.safe_load(knowledge())]

    def mutate(base: dict[str, Any], choice: int, key_index: int, value: Any) -> str:
        data = yaml.safe_load(yaml.safe_dump(base))
        paths: list[tuple[Any, Any]] = []

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                for k in list(node):
                    paths.append((node, k))
                    walk(node[k])
            elif isinstance(node, list):
                for i, item in enumerate(node):
                    paths.append((node, i))
                    walk(item)

        walk(data)
        parent, key = paths[key_index % len(paths)]
        if choice == 0:
            del parent[key]
        elif choice == 1:
            parent[key] = value
        elif isinstance(parent, dict):
            parent[f"extra_{key}"] = value
        else:
            parent.append(parent[key])
        return yaml.safe_dump(data, sort_keys=False)

    return st.builds(
        mutate,
        st.sampled_from(bases),
        st.integers(0, 2),
        st.integers(0, 500),
        st.one_of(st.none(), st.integers(), st.text(max_size=5), st.lists(st.text(max_size=3))),
    )


@PARITY
@given(_near_valid(), st.sampled_from(RELS))
def test_parity_on_near_valid_files(text: str, rel: str) -> None:
    _compare(text, rel)


@PARITY
@given(st.text(max_size=120), st.sampled_from(RELS))
def test_parity_on_text(text: str, rel: str) -> None:
    _compare(text, rel)


def test_parity_on_versions() -> None:
    for version in ["1", "2", "3", "4", "0", "-1", "'3'", "3.0", "true", "null", "[3]", "v3"]:
        for base in (SKILL, knowledge()):
            for rel in RELS:
                _compare(base.replace("version: 3", f"version: {version}"), rel)
