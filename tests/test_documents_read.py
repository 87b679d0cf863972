"""Reading document files as markdown: text natively, PDF/DOCX/HTML through the optional docling."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labalign.documents import DocumentError, DocumentFile, chunk_documents, read_document
from labalign.documents import convert as convert_module
from labalign.documents.convert import check_readable


def doc(tmp_path: Path, name: str, data: bytes) -> DocumentFile:
    path = tmp_path / name
    path.write_bytes(data)
    return DocumentFile(path=path, relpath=name, repo=str(tmp_path), commit=None)


@pytest.fixture(autouse=True)
def _fresh_converter() -> Iterator[None]:
    convert_module._docling_converter.cache_clear()
    yield
    convert_module._docling_converter.cache_clear()


@pytest.mark.parametrize("name", ["a.md", "b.markdown", "c.txt", "UPPER.MD"])
def test_text_files_are_read_as_utf8(tmp_path: Path, name: str) -> None:
    file = doc(tmp_path, name, "# Títle\r\n\r\nbody — ok\rlast\n".encode())
    assert read_document(file) == "# Títle\n\nbody — ok\nlast\n"


def test_bom_is_dropped(tmp_path: Path) -> None:
    assert read_document(doc(tmp_path, "a.md", b"\xef\xbb\xbf# A\n")) == "# A\n"


def test_undecodable_file_names_file_and_line(tmp_path: Path) -> None:
    file = doc(tmp_path, "latin1.md", "line one\nline two caf\xe9\n".encode("latin-1"))
    with pytest.raises(DocumentError, match=r"latin1.md.*not valid UTF-8") as info:
        read_document(file)
    assert info.value.line == 2 and info.value.path == str(file.path)
    assert info.value.hint and "UTF-8" in info.value.hint


def test_unsupported_type(tmp_path: Path) -> None:
    with pytest.raises(DocumentError, match=r"unsupported type '.xlsx'") as info:
        read_document(doc(tmp_path, "sheet.xlsx", b"PK"))
    assert info.value.hint and ".pdf" in info.value.hint and ".md" in info.value.hint


def test_missing_file(tmp_path: Path) -> None:
    gone = DocumentFile(tmp_path / "gone.md", "gone.md", str(tmp_path), None)
    with pytest.raises(DocumentError, match=r"cannot read document 'gone.md'"):
        read_document(gone)


@pytest.mark.parametrize(("name", "kind"), [("a.pdf", "PDF"), ("b.docx", "DOCX"), ("c.html", "HTML")])
def test_docling_missing_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, kind: str
) -> None:
    # None in sys.modules makes `import docling...` raise ImportError, as when it is not installed.
    monkeypatch.setitem(sys.modules, "docling", None)
    monkeypatch.setitem(sys.modules, "docling.document_converter", None)
    for check in (read_document, check_readable):
        with pytest.raises(DocumentError) as info:
            check(doc(tmp_path, name, b"%PDF-1.4"))
        assert (
            info.value.message
            == f"reading {kind} ({name}) needs the docling extra: pip install 'labalign[docling]'"
        )


class _FakeResult:
    def __init__(self, markdown: str) -> None:
        self.document = types.SimpleNamespace(export_to_markdown=lambda: markdown)


def _install_fake_docling(monkeypatch: pytest.MonkeyPatch, convert: Any) -> list[str]:
    """A stand-in docling with the same API surface, so the glue code is exercised without it."""
    seen: list[str] = []

    class DocumentConverter:
        def convert(self, source: str) -> _FakeResult:
            seen.append(source)
            return convert(source)  # type: ignore[no-any-return]

    package = types.ModuleType("docling")
    module = types.ModuleType("docling.document_converter")
    module.DocumentConverter = DocumentConverter  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "docling", package)
    monkeypatch.setitem(sys.modules, "docling.document_converter", module)
    return seen


def test_docling_conversion_is_used_for_pdf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _install_fake_docling(monkeypatch, lambda _src: _FakeResult("## Report\r\n\r\nText from PDF.\n"))
    file = doc(tmp_path, "report.PDF", b"%PDF-1.4")
    assert read_document(file) == "## Report\n\nText from PDF.\n"
    assert seen == [str(file.path)]
    chunks = chunk_documents([file])
    assert chunks[0].heading_path == ("Report",) and chunks[0].source == "report.PDF"


def test_docling_failure_is_a_document_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_src: str) -> _FakeResult:
        raise RuntimeError("PDF is encrypted")

    _install_fake_docling(monkeypatch, broken)
    with pytest.raises(
        DocumentError, match=r"docling could not convert 'x.pdf': RuntimeError: PDF is encrypted"
    ):
        read_document(doc(tmp_path, "x.pdf", b"%PDF-1.4"))
