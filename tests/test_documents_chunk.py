"""Chunking markdown: boundaries, exact line numbers, heading paths, fences, tables, coverage."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labalign.documents import (
    Chunk,
    DocumentError,
    DocumentFile,
    chunk_documents,
    chunk_markdown,
    estimate_tokens,
)

ISLAND = """\
# Vellmoor Island

Vellmoor is a small island in the northern sea. About nine hundred people live there.

## Economy

The economy rests on fishing and, in summer, on visitors.

### Fishing

Cod and herring are caught all year. The fleet has forty boats.
Most of the catch is smoked in the harbor.

### Tourism

Ferries bring hikers from May to September.

## History

The island was settled in the twelfth century by farmers from the mainland.
"""


def check_chunks(text: str, chunks: list[Chunk], *, max_tokens: int | None = None) -> None:
    """Every chunk is an exact slice of `text`, in order, with only whitespace between them."""
    norm = text.replace("\r\n", "\n").replace("\r", "\n")
    pos = 0
    for i, chunk in enumerate(chunks):
        assert chunk.index == i
        assert chunk.text and chunk.text == chunk.text.rstrip()
        lines = chunk.text.split("\n")
        assert lines[0].strip() and lines[-1].strip(), "no leading or trailing blank lines"
        found = norm.find(chunk.text, pos)
        assert found >= 0, f"chunk {i} is not a slice of the text after the previous chunk"
        assert norm[pos:found].strip() == "", f"non-blank text skipped before chunk {i}"
        assert chunk.start_line == norm.count("\n", 0, found) + 1
        assert chunk.end_line == chunk.start_line + chunk.text.count("\n")
        if max_tokens is not None:
            assert chunk.n_tokens <= max_tokens
        pos = found + len(chunk.text)
    assert norm[pos:].strip() == "", "non-blank text after the last chunk"


def lines_of(text: str, chunk: Chunk) -> str:
    return "\n".join(text.split("\n")[chunk.start_line - 1 : chunk.end_line])


def test_sections_heading_paths_and_line_numbers() -> None:
    chunks = chunk_markdown(ISLAND, source="island.md", max_tokens=45)
    check_chunks(ISLAND, chunks, max_tokens=45)
    got = [(c.heading_path, c.start_line, c.end_line) for c in chunks]
    assert got == [
        (("Vellmoor Island",), 1, 3),
        (("Vellmoor Island", "Economy"), 5, 7),
        (("Vellmoor Island", "Economy", "Fishing"), 9, 12),
        (("Vellmoor Island", "Economy", "Tourism"), 14, 16),
        (("Vellmoor Island", "History"), 18, 20),
    ]
    for chunk in chunks:
        assert chunk.text == lines_of(ISLAND, chunk)  # whole lines here: the exact source lines
        assert chunk.source == "island.md"
        assert chunk.n_tokens == estimate_tokens(chunk.text)
    assert chunks[2].text.startswith("### Fishing\n\nCod")


def test_small_document_is_one_chunk() -> None:
    chunks = chunk_markdown(ISLAND, source="island.md")
    assert len(chunks) == 1
    assert chunks[0].heading_path == ("Vellmoor Island",)
    assert (chunks[0].start_line, chunks[0].end_line) == (1, 20)
    assert chunks[0].text == ISLAND.rstrip()


def test_tiny_sections_merge_with_siblings() -> None:
    doc = "# A\n\n## A1\n\nshort one.\n\n## A2\n\nshort two.\n\n# B\n\nshort three.\n"
    # Budget 200: everything is under a quarter of it, and A2 and B are siblings of the sections the
    # chunk started with, so all merges: the heading path is what the sections share (nothing).
    chunks = chunk_markdown(doc, source="d.md", max_tokens=200)
    check_chunks(doc, chunks, max_tokens=200)
    assert [c.heading_path for c in chunks] == [()]
    # Budget 60: "# A" (heading only) goes with A1; A1 is tiny and takes its sibling A2; then the
    # chunk is no longer tiny and B starts a new one.
    chunks = chunk_markdown(doc, source="d.md", max_tokens=60)
    check_chunks(doc, chunks, max_tokens=60)
    assert [(c.heading_path, c.start_line, c.end_line) for c in chunks] == [(("A",), 1, 9), (("B",), 11, 13)]
    # Budget 20: no room to merge at all.
    chunks = chunk_markdown(doc, source="d.md", max_tokens=20)
    check_chunks(doc, chunks, max_tokens=20)
    assert [c.heading_path for c in chunks] == [("A", "A1"), ("A", "A2"), ("B",)]


def test_deeper_section_does_not_pull_in_an_uncle() -> None:
    body = "Some words here that make the section long enough to not be tiny at all. " * 2
    doc = f"# A\n\n## A1\n\n### A1x\n\ntiny.\n\n## A2\n\n{body}\n"
    chunks = chunk_markdown(doc, source="d.md", max_tokens=100)
    check_chunks(doc, chunks, max_tokens=100)
    # A1x's chunk (anchored at "# A", heading-only, so the chunk is A > A1 > A1x) is tiny, and A2
    # is a descendant of A: merged.
    assert len(chunks) == 1
    doc2 = f"# A\n\nintro of A. {body}\n\n## A1\n\n### A1x\n\ntiny.\n\n# B\n\n{body}\n"
    chunks = chunk_markdown(doc2, source="d.md", max_tokens=100)
    check_chunks(doc2, chunks, max_tokens=100)
    paths = [c.heading_path for c in chunks]
    assert ("A", "A1", "A1x") in paths  # tiny, but B is not under A1's parent: no merge
    assert paths[-1] == ("B",)


def test_heading_lines_in_code_fences_are_code() -> None:
    doc = (
        "# Setup\n\nRun this:\n\n```bash\n# install\npip install x\n\n# run\nx --help\n```\n\n"
        "~~~\n## not a heading either\n~~~\n\n## Next\n\nDone.\n"
    )
    chunks = chunk_markdown(doc, source="d.md", max_tokens=30)
    check_chunks(doc, chunks, max_tokens=30)
    assert all("install" not in p for c in chunks for p in c.heading_path)
    assert {c.heading_path for c in chunks} <= {("Setup",), ("Setup", "Next")}
    fence = next(c for c in chunks if "pip install" in c.text)
    assert "```bash" in fence.text and fence.text.count("```") == 2, "a fence that fits is never split"


def test_fence_is_split_only_when_it_alone_exceeds_the_budget() -> None:
    code = "\n".join(f"value_{i} = compute({i})" for i in range(40))
    doc = f"# Code\n\nIntro.\n\n```python\n{code}\n```\n\nAfter.\n"
    chunks = chunk_markdown(doc, source="d.md", max_tokens=60)
    check_chunks(doc, chunks, max_tokens=60)
    assert len(chunks) > 2
    # Split between lines: every chunk is made of whole source lines.
    for chunk in chunks:
        assert chunk.text == lines_of(doc, chunk).strip("\n")


def test_unclosed_fence_runs_to_the_end() -> None:
    doc = "# A\n\ntext\n\n```\n# inside\n\n# still inside\n"
    chunks = chunk_markdown(doc, source="d.md", max_tokens=500)
    check_chunks(doc, chunks)
    assert [c.heading_path for c in chunks] == [("A",)]


def test_tables_are_kept_whole() -> None:
    table = "| name | boats |\n|:-----|------:|\n" + "\n".join(f"| harbor {i} | {i} |" for i in range(6))
    doc = f"# Harbors\n\nThe harbors of the island:\n{table}\n\nThat is all.\n"
    budget = estimate_tokens(table) + 2  # the table fits, but not with the text before it
    chunks = chunk_markdown(doc, source="d.md", max_tokens=budget)
    check_chunks(doc, chunks, max_tokens=budget)
    holder = [c for c in chunks if "| name |" in c.text]
    assert len(holder) == 1 and holder[0].text == table
    assert chunks[0].text == "# Harbors\n\nThe harbors of the island:"


def test_big_table_splits_between_rows() -> None:
    table = "| a | b |\n|---|---|\n" + "\n".join(f"| row {i} | value {i} |" for i in range(50))
    chunks = chunk_markdown(table, source="t.md", max_tokens=40)
    check_chunks(table, chunks, max_tokens=40)
    for chunk in chunks:
        assert chunk.text == lines_of(table, chunk)


def test_long_paragraph_splits_at_sentences() -> None:
    sentences = [f"Sentence number {i} talks about the harbor of the island." for i in range(30)]
    line = " ".join(sentences)
    doc = f"# Long\n\n{line}\n"
    chunks = chunk_markdown(doc, source="d.md", max_tokens=50)
    check_chunks(doc, chunks, max_tokens=50)
    assert len(chunks) > 3
    for chunk in chunks:
        assert chunk.text.endswith("island."), chunk.text  # every cut at a sentence end
        assert chunk.heading_path == ("Long",)
    assert chunks[0].text.startswith("# Long\n\nSentence number 0")
    assert all(c.start_line == c.end_line == 3 for c in chunks[1:])


def test_wrapped_paragraph_splits_at_lines_ending_sentences() -> None:
    wrapped = "\n".join(
        ["The first sentence starts here and", "ends on this line.", "Another one starts and", "ends here."]
        * 10
    )
    chunks = chunk_markdown(wrapped, source="d.md", max_tokens=40)
    check_chunks(wrapped, chunks, max_tokens=40)
    assert all(c.text.endswith(("line.", "here.")) for c in chunks)


def test_hard_split_of_a_word_longer_than_the_budget() -> None:
    blob = "a" * 400
    doc = f"# Blob\n\n{blob}\n"
    chunks = chunk_markdown(doc, source="d.md", max_tokens=20)
    check_chunks(doc, chunks, max_tokens=20)
    assert chunks[0].text == "# Blob"  # the heading is not glued to a character fragment
    assert "".join(c.text for c in chunks[1:]) == blob


def test_crlf_line_numbers() -> None:
    doc = "# A\r\n\r\nfirst\r\n\r\n# B\r\n\r\nsecond\r\n"
    chunks = chunk_markdown(doc, source="d.md", max_tokens=8)
    check_chunks(doc, chunks, max_tokens=8)
    assert [(c.text, c.start_line, c.end_line) for c in chunks] == [
        ("# A\n\nfirst", 1, 3),
        ("# B\n\nsecond", 5, 7),
    ]


def test_heading_forms() -> None:
    doc = "#NoSpace is text\n\n  ## Indented ##\n\nbody\n\n    # code, four spaces\n\n####### seven\n"
    chunks = chunk_markdown(doc, source="d.md", max_tokens=12)
    check_chunks(doc, chunks, max_tokens=12)
    assert {c.heading_path for c in chunks} == {(), ("Indented",)}


def test_trailing_headings_without_body() -> None:
    doc = "# A\n\nbody text.\n\n## Empty\n\n### Also empty\n"
    chunks = chunk_markdown(doc, source="d.md", max_tokens=500)
    check_chunks(doc, chunks)
    assert len(chunks) == 1  # merged back rather than a heading-only fragment
    alone = chunk_markdown("## Only\n", source="d.md")
    assert [(c.heading_path, c.text) for c in alone] == [(("Only",), "## Only")]


def test_empty_and_blank_documents() -> None:
    assert chunk_markdown("", source="d.md") == []
    assert chunk_markdown(" \n\n\t\n", source="d.md") == []


@pytest.mark.parametrize("bad", [0, -5, True])
def test_bad_budget(bad: int) -> None:
    with pytest.raises(DocumentError, match=r"positive integer"):
        chunk_markdown("text", source="d.md", max_tokens=bad)


def test_custom_counter_is_used() -> None:
    calls: list[str] = []

    def words(text: str) -> int:
        calls.append(text)
        return len(text.split())

    chunks = chunk_markdown(ISLAND, source="d.md", max_tokens=30, count_tokens=words)
    check_chunks(ISLAND, chunks, max_tokens=30)
    assert calls and all(c.n_tokens == len(c.text.split()) for c in chunks)


def test_single_unsplittable_character_may_exceed() -> None:
    chunks = chunk_markdown("é", source="d.md", max_tokens=1)  # the estimate counts it as 2
    assert [(c.text, c.n_tokens) for c in chunks] == [("é", 2)]


def test_to_dict() -> None:
    chunk = chunk_markdown(ISLAND, source="island.md", max_tokens=45)[1]
    data = chunk.to_dict()
    assert data["heading_path"] == ["Vellmoor Island", "Economy"]
    assert data["start_line"] == 5 and data["source"] == "island.md"


def test_chunk_documents_indexes_across_files(tmp_path: Path) -> None:
    a = tmp_path / "a.md"
    b = tmp_path / "b.txt"
    a.write_text(ISLAND)
    b.write_text("plain text document.\n")
    files = [DocumentFile(a, "a.md", str(tmp_path), None), DocumentFile(b, "b.txt", str(tmp_path), None)]
    chunks = chunk_documents(files, max_tokens=45)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert [c.source for c in chunks] == ["a.md"] * 5 + ["b.txt"]
    assert chunks[-1].start_line == 1


def test_chunk_documents_without_text(tmp_path: Path) -> None:
    empty = tmp_path / "empty.md"
    empty.write_text("\n\n")
    with pytest.raises(DocumentError, match=r"no text: empty.md"):
        chunk_documents([DocumentFile(empty, "empty.md", str(tmp_path), None)])
    assert chunk_documents([]) == []


# --- property: coverage, exact slices, line numbers, budget, on generated markdown --------------

_words = st.sampled_from(
    ["the", "island", "harbor", "a", "fishing", "boats", "1984", "über", "naïve", "x", "internationalization",
     "`code`", "**bold**", "Mr.", "e.g.", "[link](http://x.y)", "|", "#", "```", "~~~"]
)  # fmt: skip
_sentence = st.lists(_words, min_size=1, max_size=14).map(lambda ws: " ".join(ws)).map(lambda s: s + ".")
_line = st.one_of(
    st.lists(_sentence, min_size=1, max_size=6).map(" ".join),
    st.builds(lambda n, s: "  " * n + "- " + s, st.integers(0, 2), _sentence),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40),
)
_paragraph = st.lists(_line, min_size=1, max_size=5).map("\n".join)
_heading = st.builds(
    lambda level, title, indent, close: " " * indent + "#" * level + " " + title + (" ##" if close else ""),
    st.integers(1, 7),
    st.text(alphabet="abc XYZ#", min_size=0, max_size=12),
    st.integers(0, 4),
    st.booleans(),
)
_fence = st.builds(
    lambda mark, body, closed: f"{mark}lang\n{body}\n" + (mark if closed else ""),
    st.sampled_from(["```", "~~~", "````"]),
    st.lists(st.one_of(_line, _heading, st.just("")), max_size=6).map("\n".join),
    st.booleans(),
)
_table = st.builds(
    lambda rows: "| h1 | h2 |\n|----|:--:|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows),
    st.lists(st.tuples(_sentence, _sentence), max_size=6),
)
_block = st.one_of(_paragraph, _heading, _heading, _fence, _table, st.just(""), st.just("   "))
_markdown = st.builds(
    lambda blocks, seps, crlf: _join(blocks, seps, crlf),
    st.lists(_block, max_size=14),
    st.lists(st.sampled_from(["\n", "\n\n", "\n\n\n", "\n \n"]), min_size=14, max_size=14),
    st.booleans(),
)


def _join(blocks: list[str], seps: list[str], crlf: bool) -> str:
    text = "".join(block + sep for block, sep in zip(blocks, seps, strict=False))
    return text.replace("\n", "\r\n") if crlf else text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_markdown, max_tokens=st.integers(2, 120))
def test_property_generated_markdown(text: str, max_tokens: int) -> None:
    chunks = chunk_markdown(text, source="gen.md", max_tokens=max_tokens)
    check_chunks(text, chunks, max_tokens=max_tokens)
    # Every non-blank line of the input is in exactly one chunk, whole or (cut) in consecutive ones.
    norm = text.replace("\r\n", "\n").replace("\r", "\n")
    for number, line in enumerate(norm.split("\n"), start=1):
        if line.strip():
            holders = [c for c in chunks if c.start_line <= number <= c.end_line]
            assert holders, f"line {number} is in no chunk"
            if len(holders) > 1:
                assert all(h.start_line == h.end_line == number for h in holders[1:-1])
                pieces = "".join("".join(h.text.split()) for h in holders)
                assert "".join(line.split()) in pieces


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=400), max_tokens=st.integers(2, 60))
def test_property_arbitrary_text(text: str, max_tokens: int) -> None:
    check_chunks(text, chunk_markdown(text, source="any.md", max_tokens=max_tokens), max_tokens=max_tokens)
