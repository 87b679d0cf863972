"""A knowledge leaf's documents as generation and evaluation both read them: resolved per the settings
(cache, offline, size limit, allowed folders), read, chunked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labalign.config import Settings
from labalign.documents import (
    Chunk,
    DocumentFile,
    DocumentSource,
    TokenCounter,
    chunk_documents,
    read_document,
    resolve_documents,
    token_counter,
)
from labalign.errors import LabalignError
from labalign.taxonomy.leaf import Leaf


@dataclass(frozen=True)
class LeafDocuments:
    files: list[DocumentFile]
    chunks: list[Chunk]
    provenance: dict[str, Any]  # repo, commit, patterns: what the generated records cite


def resolve_leaf_documents(
    source: DocumentSource, leaf_dir: Path, taxonomy_root: Path, s: Settings
) -> list[DocumentFile] | None:
    """A leaf's document files per the settings (cache, offline, size limit, the folders local
    documents may come from: the taxonomy root and documents.allowed_roots); None: offline + remote."""
    return resolve_documents(
        source,
        base_dir=leaf_dir,
        cache_dir=s.cache_dir,
        allowed_roots=(taxonomy_root, *s.documents.allowed_roots),
        offline=s.taxonomy.offline,
        max_file_bytes=int(s.documents.max_file_mb * 2**20),
    )


def leaf_documents(leaf: Leaf, s: Settings, count: TokenCounter | None = None) -> LeafDocuments | None:
    """The leaf's files and chunks (sdg.max_chunks applied); None for a leaf without documents."""
    if leaf.document is None:
        return None
    files = resolve_leaf_documents(leaf.document, leaf.path.parent, leaf.taxonomy_root, s)
    if files is None:
        raise LabalignError(
            f"documents of {leaf.name} are remote and not cached, and --offline is set",
            path=leaf.path,
            hint="run once without --offline to fetch them",
        )
    for f in files:
        read_document(f)  # fail early, naming the file, before any teacher call
    chunks = chunk_documents(
        files, max_tokens=s.documents.chunk_tokens, count_tokens=count or token_counter(s.documents.tokenizer)
    )
    if s.sdg.max_chunks is not None:
        chunks = chunks[: s.sdg.max_chunks]
    provenance = {
        "repo": leaf.document.repo,
        "commit": files[0].commit if files else leaf.document.commit,
        "patterns": list(leaf.document.patterns),
    }
    return LeafDocuments(files, chunks, provenance)
