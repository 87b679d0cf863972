"""`labalign taxonomy`: validate, diff, list and show taxonomy leaves."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from labalign.cli._common import (
    AllowDocuments,
    OutputFormat,
    TaxonomyAlias,
    TaxonomyArg,
    allowed_roots_override,
    console,
    err_console,
    pick_taxonomy,
    print_json,
    settings,
    taxonomy_and_leaf,
)
from labalign.errors import TaxonomyError
from labalign.taxonomy import (
    Leaf,
    TaxonomyFile,
    ValidationOptions,
    ValidationReport,
    ValidationResult,
    changed_files,
    discover,
    require_files,
    validate_files,
    validate_paths,
)
from labalign.taxonomy.documents import resolve_leaf_documents

app = typer.Typer(
    name="taxonomy", help="Validate, diff, list and show taxonomy leaves.", no_args_is_help=True
)

_FORMAT = typer.Option(OutputFormat.text, "--format", help="text or json.")
_FOUNDATIONAL = typer.Option(
    None, "--include-foundational/--no-foundational", help="Also read foundational_skills/."
)


def _validate_with_progress(files: list[TaxonomyFile], options: ValidationOptions) -> ValidationResult:
    """Validate with a progress bar on stderr (shown on a terminal only; document fetches can be slow)."""
    with Progress(
        TextColumn("validating"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.description}"),
        console=err_console,
        transient=True,
        disable=len(files) < 2,
    ) as progress:
        task = progress.add_task("", total=len(files))
        return validate_files(
            files, options, on_file=lambda tf: progress.update(task, advance=1, description=tf.relpath)
        )


def _print_report(report: ValidationReport) -> None:
    for file in report.files:
        for p in file.problems:
            style = "bold red" if p.severity == "error" else "yellow"
            line = Text(f"{file.relpath}:{p.line}:{p.column}: [{p.yaml_path}] ")
            line.append(p.severity, style=style)
            line.append(f": {p.message}")
            console.print(line, soft_wrap=True, highlight=False)
    style = "bold red" if report.error_count else "green"
    console.print(Text(report.summary(), style=style), soft_wrap=True, highlight=False)


@app.command("validate")
def validate(
    ctx: typer.Context,
    paths: list[Path] = typer.Argument(None, help="Taxonomy roots, sub-folders or qna.yaml files."),
    offline: bool = typer.Option(None, "--offline", help="Do not fetch remote document repositories."),
    strict: bool = typer.Option(None, "--strict", help="Treat warnings (lint, quality checks) as errors."),
    include_foundational: bool = _FOUNDATIONAL,
    allow_documents: AllowDocuments = None,
    fmt: OutputFormat = _FORMAT,
) -> None:
    """Check qna.yaml files against InstructLab's schemas, yamllint and our quality checks.

    Prints `path:line:column: [yaml.path] message` for each problem; exits 1 when there is any error.

    Example: labalign taxonomy validate examples/taxonomy --offline --format json
    """
    s = settings(
        ctx,
        **{
            "taxonomy.offline": offline,
            "taxonomy.strict": strict,
            "taxonomy.include_foundational": include_foundational,
            "documents.allowed_roots": allowed_roots_override(ctx, allow_documents),
        },
    )
    options = ValidationOptions.from_settings(s)
    given = paths or [s.taxonomy.path]
    files = require_files(discover(given, include_foundational=options.include_foundational), given)
    result = _validate_with_progress(files, options)
    if fmt is OutputFormat.json:
        print_json(result.report.record().model_dump(mode="json"))
    else:
        _print_report(result.report)
    raise typer.Exit(0 if result.report.ok else 1)


@app.command("diff")
def diff(
    ctx: typer.Context,
    root: Path = typer.Argument(None, help="Taxonomy root (default: settings taxonomy.path)."),
    base: str = typer.Option(
        None,
        "--base",
        help="Git ref to compare with, or 'empty' for every file. "
        "Default: origin/main, main or HEAD, the first that exists.",
    ),
    check: bool = typer.Option(True, "--validate/--no-validate", help="Also validate the changed files."),
    offline: bool = typer.Option(None, "--offline", help="Do not fetch remote document repositories."),
    include_foundational: bool = _FOUNDATIONAL,
    fmt: OutputFormat = _FORMAT,
) -> None:
    """List taxonomy files added or changed against a git ref (untracked included), and validate them.

    A folder that is not a git repository lists every file.

    Example: labalign taxonomy diff ~/taxonomy --base origin/main
    """
    s = settings(ctx, **{"taxonomy.offline": offline, "taxonomy.include_foundational": include_foundational})
    result = changed_files(
        root or s.taxonomy.path, base, include_foundational=s.taxonomy.include_foundational
    )
    report = (
        _validate_with_progress(result.files, ValidationOptions.from_settings(s)).report if check else None
    )
    if fmt is OutputFormat.json:
        out: dict[str, object] = {"base": result.base, "changed": [f.relpath for f in result.files]}
        if report is not None:
            out["validation"] = report.record().model_dump(mode="json")
        print_json(out)
    else:
        console.print(f"compared with: {result.base}", highlight=False)
        for f in result.files:
            console.print(f.relpath, soft_wrap=True, highlight=False)
        if not result.files:
            console.print("no changed taxonomy files")
        if report is not None and result.files:
            _print_report(report)
    raise typer.Exit(1 if report is not None and not report.ok else 0)


def _leaves(ctx: typer.Context, root: Path | None) -> tuple[list[Leaf], ValidationReport, Path]:
    s = settings(ctx)
    base = root or s.taxonomy.path
    options = ValidationOptions.from_settings(s, check_documents=False)
    result = validate_paths([base], options)
    return result.leaves, result.report, base


def _document_summary(leaf: Leaf) -> str:
    if leaf.document is None:
        return "-"
    return f"{leaf.document.repo} ({', '.join(leaf.document.patterns)})"


@app.command("list")
def list_leaves(
    ctx: typer.Context,
    root: TaxonomyArg = None,
    alias: TaxonomyAlias = None,
    fmt: OutputFormat = _FORMAT,
) -> None:
    """List the taxonomy's leaves: name, type, seed examples and document.

    Files with errors are left out and counted; run `labalign taxonomy validate` for details.

    Example: labalign taxonomy list examples/taxonomy
    """
    leaves, report, _ = _leaves(ctx, pick_taxonomy(root, alias))
    invalid = [f.relpath for f in report.files if f.errors]
    if fmt is OutputFormat.json:
        print_json(
            {
                "leaves": [
                    {
                        "leaf": leaf.name,
                        "type": leaf.kind,
                        "version": leaf.version,
                        "seed_examples": len(leaf.seed_examples),
                        "questions": leaf.question_count,
                        "document": None
                        if leaf.document is None
                        else {
                            "repo": leaf.document.repo,
                            "commit": leaf.document.commit,
                            "patterns": list(leaf.document.patterns),
                        },
                    }
                    for leaf in leaves
                ],
                "invalid_files": invalid,
            }
        )
        return
    table = Table(title=f"{len(leaves)} leaves")
    table.add_column("leaf", overflow="fold", ratio=3)
    table.add_column("type", no_wrap=True)
    table.add_column("seeds", justify="right", no_wrap=True)
    table.add_column("Q&A", justify="right", no_wrap=True)
    table.add_column("document", overflow="fold", ratio=1)
    for leaf in leaves:
        # Text cells: leaf names and repo strings are user data, never rich markup.
        kind = leaf.kind.removesuffix("_skill")
        patterns = ", ".join(leaf.document.patterns) if leaf.document else "-"
        cells = (leaf.name, kind, str(len(leaf.seed_examples)), str(leaf.question_count), patterns)
        table.add_row(*(Text(c) for c in cells))
    console.print(table)
    if invalid:
        console.print(
            f"[yellow]{len(invalid)} files with errors not listed:[/] {escape(', '.join(invalid))}",
            soft_wrap=True,
        )


@app.command("show")
def show(
    ctx: typer.Context,
    words: list[str] = typer.Argument(
        ...,
        metavar="[TAXONOMY] LEAF",
        show_default=False,
        help="Taxonomy root (optional; default: setting taxonomy.path), then the leaf: its name (folder "
        "under the root) or a qna.yaml path.",
    ),
    alias: TaxonomyAlias = None,
    offline: bool = typer.Option(None, "--offline", help="Do not fetch remote document repositories."),
    allow_documents: AllowDocuments = None,
    fmt: OutputFormat = _FORMAT,
) -> None:
    """Show one leaf: its description, seed examples and resolved documents.

    Example: labalign taxonomy show examples/taxonomy knowledge/history/quillmarrow_island
    """
    root, leaf_name = taxonomy_and_leaf(words, alias)
    s = settings(
        ctx,
        **{
            "taxonomy.offline": offline,
            "documents.allowed_roots": allowed_roots_override(ctx, allow_documents),
        },
    )
    leaf = _find_leaf(ctx, leaf_name, root)
    files = None
    if leaf.document is not None:
        files = resolve_leaf_documents(leaf.document, leaf.path.parent, leaf.taxonomy_root, s)
    if fmt is OutputFormat.json:
        print_json(
            {
                "leaf": leaf.name,
                "path": str(leaf.path),
                "type": leaf.kind,
                "version": leaf.version,
                "created_by": leaf.created_by,
                "description": leaf.task_description,
                "domain": leaf.domain,
                "seed_examples": [
                    {
                        "line": seed.line,
                        "context": seed.context,
                        "questions_and_answers": [
                            {"question": q.question, "answer": q.answer} for q in seed.qna
                        ],
                    }
                    for seed in leaf.seed_examples
                ],
                "documents": None if files is None else [str(f.path) for f in files],
            }
        )
        return
    console.print(
        f"[bold]{escape(leaf.name)}[/]  ({leaf.kind.replace('_', ' ')}, version {leaf.version}, "
        f"by {leaf.created_by})",
        soft_wrap=True,
    )
    if leaf.domain:
        console.print(f"[bold]domain:[/] {escape(leaf.domain)}", soft_wrap=True)
    label = "outline" if leaf.kind == "knowledge" else "task"
    console.print(f"[bold]{label}:[/] {escape(leaf.task_description.strip())}", soft_wrap=True)
    if leaf.document is not None:
        where = (
            "skipped (offline, remote repository)" if files is None else ", ".join(f.relpath for f in files)
        )
        console.print(
            f"[bold]document:[/] {escape(_document_summary(leaf))} -> {escape(where)}", soft_wrap=True
        )
    for seed in leaf.seed_examples:
        console.rule(f"seed example {seed.index + 1} (line {seed.line})")
        if seed.context:
            console.print(f"[dim]context:[/] {escape(seed.context.strip())}", soft_wrap=True)
        for q in seed.qna:
            console.print(f"[bold cyan]Q:[/] {escape(q.question.strip())}", soft_wrap=True)
            console.print(f"[bold green]A:[/] {escape(q.answer.strip())}", soft_wrap=True)


def _find_leaf(ctx: typer.Context, name: str, root: Path | None) -> Leaf:
    as_path = Path(name)
    if as_path.exists():
        # A qna.yaml or its folder given directly: validate just that file.
        target = as_path / "qna.yaml" if as_path.is_dir() else as_path
        s = settings(ctx)
        result = validate_paths([target], ValidationOptions.from_settings(s, check_documents=False))
        if result.leaves:
            return result.leaves[0]
        _raise_invalid(target, result.report)
    leaves, report, base = _leaves(ctx, root)
    wanted = name.strip("/").removesuffix("/qna.yaml")
    for leaf in leaves:
        if leaf.name == wanted:
            return leaf
    for file in report.files:
        if file.relpath.removesuffix("/qna.yaml") == wanted:
            _raise_invalid(file.path, report)
    known = ", ".join(leaf.name for leaf in leaves[:5]) or "none"
    raise TaxonomyError(
        f"no leaf named '{wanted}'", path=base, hint=f"see 'labalign taxonomy list'; leaves include: {known}"
    )


def _raise_invalid(path: Path, report: ValidationReport) -> None:
    raise TaxonomyError(
        f"leaf has {report.error_count} errors", path=path, hint="run 'labalign taxonomy validate' on it"
    )
