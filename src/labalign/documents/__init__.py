"""Knowledge documents: resolve a leaf's `document` block to files, read them as markdown, chunk them.

Typical use: ``files = resolve_documents(source, base_dir=leaf_dir, cache_dir=cache)`` (a git fetch
or a local folder), then ``chunks = chunk_documents(files, max_tokens=500)``.
"""

from labalign.documents.chunk import Chunk, chunk_documents, chunk_markdown
from labalign.documents.convert import read_document
from labalign.documents.resolve import DEFAULT_MAX_FILE_BYTES, resolve_documents
from labalign.documents.source import DocumentFile, DocumentSource
from labalign.documents.tokens import TokenCounter, estimate_tokens, token_counter
from labalign.errors import DocumentError  # re-exported: callers catch it next to the API

__all__ = [
    "DEFAULT_MAX_FILE_BYTES",
    "Chunk",
    "DocumentError",
    "DocumentFile",
    "DocumentSource",
    "TokenCounter",
    "chunk_documents",
    "chunk_markdown",
    "estimate_tokens",
    "read_document",
    "resolve_documents",
    "token_counter",
]
