"""Reading a document file as markdown text: markdown and text natively, PDF/DOCX/HTML via docling."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from functools import lru_cache
from typing import Any

from labalign.documents.source import DocumentFile
from labalign.errors import DocumentError

TEXT_SUFFIXES = frozenset({".md", ".markdown", ".txt"})
# Converted by docling; the value names the format in messages.
DOCLING_SUFFIXES = {".pdf": "PDF", ".docx": "DOCX", ".html": "HTML", ".htm": "HTML"}


def read_document(file: DocumentFile) -> str:
    """The document's text as markdown, with ``\\n`` line endings.

    ``.md``, ``.markdown`` and ``.txt`` are read as UTF-8 (a BOM is dropped); ``.pdf``, ``.docx`` and
    ``.html`` are converted by docling, an optional extra (``pip install 'labalign[docling]'``).
    """
    check_readable(file)
    suffix = file.path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return _read_text(file)
    return _convert_with_docling(file, DOCLING_SUFFIXES[suffix])


def check_readable(file: DocumentFile) -> None:
    """Raise the DocumentError reading would, without reading: a type this installation cannot read.

    `taxonomy validate` calls it so that a PDF with no docling installed fails there, naming the fix,
    rather than minutes later in generation.
    """
    suffix = file.path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return
    if suffix in DOCLING_SUFFIXES:
        if not _docling_installed():
            raise _needs_docling(file, DOCLING_SUFFIXES[suffix])
        return
    supported = ", ".join(sorted(TEXT_SUFFIXES | DOCLING_SUFFIXES.keys()))
    raise DocumentError(
        f"document {file.relpath!r} has an unsupported type {suffix or '(no extension)'!r}",
        path=file.path,
        hint=f"supported: {supported}; change document.patterns to match only those",
    )


def _docling_installed() -> bool:
    # Found without importing it (docling loads torch and layout models: seconds).
    if "docling" in sys.modules:
        return sys.modules["docling"] is not None
    return importlib.util.find_spec("docling") is not None


def _needs_docling(file: DocumentFile, kind: str) -> DocumentError:
    return DocumentError(
        f"reading {kind} ({file.relpath}) needs the docling extra: pip install 'labalign[docling]'",
        path=file.path,
        hint=f"or convert {file.relpath} to markdown and point document.patterns at the .md file",
    )


def _read_text(file: DocumentFile) -> str:
    try:
        data = file.path.read_bytes()
    except OSError as exc:
        raise DocumentError(
            f"cannot read document {file.relpath!r}: {exc.strerror or exc}", path=file.path
        ) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DocumentError(
            f"document {file.relpath!r} is not valid UTF-8 (byte {exc.start})",
            path=file.path,
            line=line,
            hint="save the file as UTF-8",
        ) from None
    return _normalise_newlines(text)


def _normalise_newlines(text: str) -> str:
    # Line numbers of chunks count '\n'; a CRLF or CR-only file must number lines as an editor does.
    return text.replace("\r\n", "\n").replace("\r", "\n")


@lru_cache(maxsize=1)
def _docling_converter() -> Any:
    # Imported lazily: docling pulls in torch and layout models, and is an optional extra.
    module = importlib.import_module("docling.document_converter")
    return module.DocumentConverter()


def _convert_with_docling(file: DocumentFile, kind: str) -> str:
    try:
        converter = _docling_converter()
    except ImportError:
        raise _needs_docling(file, kind) from None
    try:
        markdown = converter.convert(str(file.path)).document.export_to_markdown()
    except Exception as exc:  # docling raises many types; any failure here is about this input file
        raise DocumentError(
            f"docling could not convert {file.relpath!r}: {type(exc).__name__}: {exc}",
            path=file.path,
            hint="check that the file opens in a viewer, or convert it to markdown yourself",
        ) from None
    if not isinstance(markdown, str):
        raise DocumentError(f"docling returned no text for {file.relpath!r}", path=file.path)
    return _normalise_newlines(markdown)
