"""`labalign documents ...`: look at the documents of a knowledge leaf and how they are chunked."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from labalign import yamlsafe
from labalign.cli._common import (
    AllowDocuments,
    OutputFormat,
    TaxonomyAlias,
    allowed_roots_override,
    console,
    err_console,
    print_json,
    settings,
    taxonomy_and_leaf,
)
from labalign.documents import (
    DocumentSource,
    chunk_documents,
    token_counter,
)
from labalign.documents.security import redact
from labalign.errors import DocumentError
from labalign.taxonomy.discover import find_root
from labalign.taxonomy.documents import resolve_leaf_documents

app = typer.Typer(
    name="documents",
    help="Fetch, read and chunk the source documents of knowledge leaves.\n\n"
    "Example: labalign documents chunk examples/taxonomy knowledge/history/quillmarrow_island",
    no_args_is_help=True,
)


@app.callback()
def _group() -> None:
    # A callback keeps `chunk` a subcommand (a Typer with one command would run it directly).
    pass


@app.command("chunk")
def chunk_command(
    ctx: typer.Context,
    words: Annotated[
        list[str],
        typer.Argument(
            metavar="[TAXONOMY] LEAF",
            show_default=False,
            help="Taxonomy root (optional: a relative LEAF is looked up under it first), then a knowledge "
            "qna.yaml or the folder that holds it.",
        ),
    ],
    alias: TaxonomyAlias = None,
    max_tokens: Annotated[
        int | None,
        typer.Option(
            "--max-tokens", min=16, help="Token budget of a chunk (default: settings documents.chunk_tokens)."
        ),
    ] = None,
    tokenizer: Annotated[
        str | None,
        typer.Option(
            "--tokenizer",
            help="tokenizer.json or Hugging Face model folder to count tokens with "
            "(default: documents.tokenizer, else a conservative estimate).",
        ),
    ] = None,
    offline: Annotated[
        bool | None,
        typer.Option("--offline", help="Do not fetch; remote documents not in the cache are skipped."),
    ] = None,
    allow_documents: AllowDocuments = None,
    output_format: Annotated[
        OutputFormat, typer.Option("--format", help="text: a table; json: a list of chunk objects.")
    ] = OutputFormat.text,
) -> None:
    """Resolve, read and chunk the documents of one knowledge leaf, and show the chunks.

    Example: labalign documents chunk examples/taxonomy/knowledge/history/quillmarrow_island --max-tokens 300
    """
    s = settings(
        ctx,
        **{
            "documents.chunk_tokens": max_tokens,
            "documents.tokenizer": tokenizer,
            "taxonomy.offline": offline,
            "documents.allowed_roots": allowed_roots_override(ctx, allow_documents),
        },
    )
    budget = s.documents.chunk_tokens
    taxonomy, leaf = taxonomy_and_leaf(words, alias)
    leaf_file = _leaf_file(Path(leaf), taxonomy)
    source = read_leaf_document(leaf_file)
    files = resolve_leaf_documents(source, leaf_file.parent, find_root(leaf_file), s)
    if files is None:
        message = (
            f"skipped: {redact(source.repo)} is not in the cache and --offline is set "
            "(run without it to fetch)"
        )
        if output_format is OutputFormat.json:
            print_json([])
            err_console.print(message, markup=False, highlight=False, soft_wrap=True)
        else:
            console.print(message, markup=False, highlight=False, soft_wrap=True)
        return
    chunks = chunk_documents(files, max_tokens=budget, count_tokens=token_counter(s.documents.tokenizer))
    if output_format is OutputFormat.json:
        print_json([c.to_dict() for c in chunks])
        return
    console.print(Text(str(leaf_file), style="bold"), soft_wrap=True)
    table = Table()
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("source:lines", no_wrap=True)
    table.add_column("tokens", justify="right", no_wrap=True)
    table.add_column("section", overflow="fold")
    titles = {c.heading_path[0] for c in chunks if c.heading_path}
    for chunk in chunks:
        # The document title heads every chunk when there is one: show the section below it.
        path = (
            chunk.heading_path[1:] if len(titles) == 1 and len(chunk.heading_path) > 1 else chunk.heading_path
        )
        # Text() cells: document text is data, never rich markup ("[bold]" in a document stays as is).
        table.add_row(
            str(chunk.index),
            Text(f"{chunk.source}:{chunk.start_line}-{chunk.end_line}"),
            str(chunk.n_tokens),
            Text(" > ".join(path)),
        )
    console.print(table)
    folder = redact(source.repo) if files and files[0].commit else str(files[0].path.parent if files else "")
    where = folder + (f" @ {files[0].commit[:12]}" if files and files[0].commit else "")
    total = sum(c.n_tokens for c in chunks)
    largest = max((c.n_tokens for c in chunks), default=0)
    counted = "tokenizer" if s.documents.tokenizer else "estimated"
    console.print(
        f"{len(chunks)} chunk{'' if len(chunks) == 1 else 's'} from {len(files)} "
        f"file{'' if len(files) == 1 else 's'} of {where}: {total} tokens ({counted}), "
        f"largest {largest}, budget {budget}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def _leaf_file(leaf: Path, taxonomy: Path | None) -> Path:
    path = leaf.expanduser()
    if taxonomy is not None and not path.is_absolute() and (taxonomy / path).exists():
        path = taxonomy / path
    if path.is_dir():
        path = path / "qna.yaml"
    if not path.is_file():
        raise DocumentError(
            f"no knowledge leaf at {path}",
            hint="pass a qna.yaml file or its folder (relative to TAXONOMY or the current folder)",
        )
    return path


def read_leaf_document(path: Path) -> DocumentSource:
    """The `document` block of a qna.yaml. Only that block is checked: chunking a leaf's documents
    should work while its seed examples are still being written."""
    try:
        doc = yamlsafe.load(path)
    except yamlsafe.YamlError as exc:
        raise DocumentError(
            f"invalid YAML: {exc.message}", path=path, line=exc.line, column=exc.column, hint=exc.hint
        ) from None
    data = doc.data
    if not isinstance(data, dict) or "document" not in data:
        raise DocumentError(
            "this leaf has no document block",
            path=path,
            hint="only knowledge leaves (knowledge/.../qna.yaml) have one: {repo, commit, patterns}",
        )
    return DocumentSource.from_mapping(data["document"], path=path)
