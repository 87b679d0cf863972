"""Validating taxonomy files: InstructLab's schema verdicts, yamllint, our quality checks, documents."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labalign import yamlsafe
from labalign.config import Settings, TaxonomySettings
from labalign.documents import DocumentError, DocumentSource, resolve_documents, token_counter
from labalign.documents.convert import check_readable
from labalign.errors import LabalignError, TaxonomyError
from labalign.paths import default_cache_dir
from labalign.taxonomy import checks, schema
from labalign.taxonomy.discover import LEAF_FILE, TaxonomyFile, discover, require_files
from labalign.taxonomy.leaf import Leaf, build_leaf
from labalign.taxonomy.lint import lint
from labalign.taxonomy.problems import FileReport, ValidationReport
from labalign.taxonomy.yamlpos import NodeLocator, path_at, yaml_path

# Qna files are a few kilobytes; a bigger one is a mistake (or an attack), not a taxonomy leaf.
MAX_QNA_BYTES = 2 * 2**20


@dataclass(frozen=True)
class ValidationOptions:
    strict: bool = False
    offline: bool = False
    include_foundational: bool = False
    check_documents: bool = True
    yamllint_config: str = TaxonomySettings.model_fields["yamllint_config"].default
    max_context_words: int = 500
    max_answer_words: int = 250
    context_window: int = 32768
    reserved_tokens: int = 1024
    chunk_tokens: int = 500
    tokenizer: str | None = None
    cache_dir: Path | None = None
    max_document_bytes: int = 50 * 2**20
    allowed_roots: tuple[Path, ...] = ()  # besides the taxonomy root (documents.allowed_roots)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> ValidationOptions:
        base = cls(
            strict=settings.taxonomy.strict,
            offline=settings.taxonomy.offline,
            include_foundational=settings.taxonomy.include_foundational,
            yamllint_config=settings.taxonomy.yamllint_config,
            max_context_words=settings.taxonomy.max_context_words,
            max_answer_words=settings.taxonomy.max_answer_words,
            context_window=settings.teacher.context_window,
            reserved_tokens=settings.teacher.max_new_tokens,
            chunk_tokens=settings.documents.chunk_tokens,
            tokenizer=settings.documents.tokenizer,
            cache_dir=settings.cache_dir,
            max_document_bytes=int(settings.documents.max_file_mb * 2**20),
            allowed_roots=tuple(settings.documents.allowed_roots),
        )
        return cls(**{**base.__dict__, **{k: v for k, v in overrides.items() if v is not None}})


@dataclass
class ValidationResult:
    report: ValidationReport
    leaves: list[Leaf]


def validate_paths(paths: Iterable[Path], options: ValidationOptions | None = None) -> ValidationResult:
    """Validate every taxonomy file found under `paths` (roots, sub-folders or files)."""
    options = options or ValidationOptions()
    paths = list(paths)
    files = require_files(discover(paths, include_foundational=options.include_foundational), paths)
    return validate_files(files, options)


def validate_files(
    files: Iterable[TaxonomyFile],
    options: ValidationOptions,
    on_file: Callable[[TaxonomyFile], None] | None = None,
) -> ValidationResult:
    """Validate the given files; `on_file` is called after each one (progress display)."""
    count = token_counter(options.tokenizer)
    report = ValidationReport()
    leaves: list[Leaf] = []
    for tf in files:
        file_report, leaf = validate_file(tf, options, count)
        report.files.append(file_report)
        if on_file is not None:
            on_file(tf)
        if leaf is not None:
            leaves.append(leaf)
    return ValidationResult(report, leaves)


def validate_file(
    tf: TaxonomyFile, options: ValidationOptions, count_tokens: Callable[[str], int]
) -> tuple[FileReport, Leaf | None]:
    """All findings for one file, and the leaf when it has no errors. Never raises on file contents."""
    report = FileReport(tf.path, tf.relpath)
    leaf = _validate_into(tf, options, count_tokens, report)
    if options.strict:
        report.problems = [
            p if p.severity == "error" else type(p)("error", p.line, p.column, p.yaml_path, p.message)
            for p in report.problems
        ]
    report.sort()
    return report, (leaf if not report.errors else None)


def _validate_into(
    tf: TaxonomyFile, options: ValidationOptions, count_tokens: Callable[[str], int], report: FileReport
) -> Leaf | None:
    if tf.path.name != LEAF_FILE:
        report.add("error", f'taxonomy file must be named "{LEAF_FILE}", not "{tf.path.name}"')
        return None
    try:
        doc = yamlsafe.load(tf.path, max_bytes=MAX_QNA_BYTES)
    except LabalignError as exc:
        report.add(
            "error",
            exc.message if not exc.hint else f"{exc.message} ({exc.hint})",
            exc.line or 1,
            exc.column or 1,
        )
        return None
    data = doc.data
    if not data:
        # InstructLab's parser reports an empty file as a warning, not an error: keep its verdict.
        report.add("warning", "the file is empty")
        return None
    if not isinstance(data, Mapping):
        report.add("error", "the top-level element must be a mapping of keys to values (e.g. 'version: 3')")
        return None

    version = schema.file_version(data)
    where = NodeLocator(doc.root)
    if version > 1:  # InstructLab lints from version 2 on only
        for problem in lint(doc.text, options.yamllint_config):
            report.add(
                "warning",
                problem.message,
                problem.line,
                problem.column,
                path_at(doc.root, problem.line, problem.column),
            )

    name = schema.schema_name_for(tf.taxonomy_parts, data)
    violations = list(schema.validate(data, version=version, name=name))
    for v in violations:
        line, col, ypath = where.at(v.parts, prefer_key=_points_at_key(v.message))
        report.add("error", v.message, line, col, ypath)
    if violations:
        return None

    lines = [where.at(["seed_examples", i])[0] for i in range(len(data.get("seed_examples", [])))]
    leaf = build_leaf(tf.leaf_name, tf.path, version, name, dict(data), lines, root=tf.root)
    checks.check_duplicate_questions(leaf, report, where)
    checks.check_ignored_keys(leaf, report, where)
    checks.check_lengths(leaf, report, where, options.max_context_words, options.max_answer_words)
    checks.check_context_size(
        leaf,
        report,
        count_tokens,
        context_window=options.context_window,
        reserved=options.reserved_tokens,
        chunk_tokens=options.chunk_tokens,
    )
    if leaf.document is not None and options.check_documents:
        _check_document(leaf.document, tf, options, report, where)
    return leaf


def _points_at_key(message: str) -> bool:
    return message.startswith("unknown key")


def _check_document(
    source: DocumentSource,
    tf: TaxonomyFile,
    options: ValidationOptions,
    report: FileReport,
    where: NodeLocator,
) -> None:
    """The leaf's documents must resolve to at least one readable file."""
    try:
        files = resolve_documents(
            source,
            base_dir=tf.path.parent,
            cache_dir=options.cache_dir or default_cache_dir(),
            allowed_roots=(tf.root, *options.allowed_roots),
            offline=options.offline,
            max_file_bytes=options.max_document_bytes,
        )
        for file in files or []:  # None: a remote repository skipped offline
            check_readable(file)
    except DocumentError as exc:
        text = str(exc.message).lower()
        about_files = any(word in text for word in ("pattern", "docling", "unsupported type"))
        target = "patterns" if about_files else "commit" if "commit" in text else "repo"
        line, col, ypath = where.at(["document", target])
        message = exc.message if not exc.hint else f"{exc.message} ({exc.hint})"
        report.add("error", message, line, col, ypath)


def load_leaves(paths: Iterable[Path], options: ValidationOptions | None = None) -> list[Leaf]:
    """Leaves ready for generation; raises a one-line TaxonomyError when any file has errors."""
    result = validate_paths(paths, options)
    raise_for_errors(result)
    return result.leaves


def raise_for_errors(result: ValidationResult) -> None:
    """A one-line TaxonomyError naming the first error (and how many there are), if any."""
    if result.report.ok:
        return
    first = next(f for f in result.report.files if f.errors)
    p = first.errors[0]
    raise TaxonomyError(
        f"{result.report.error_count} error{'s' if result.report.error_count != 1 else ''} in the taxonomy, "
        f"first: [{p.yaml_path}] {p.message}",
        path=first.path,
        line=p.line,
        column=p.column,
        hint="run 'labalign taxonomy validate' for the full list",
    )


__all__ = [
    "ValidationOptions",
    "ValidationResult",
    "load_leaves",
    "raise_for_errors",
    "validate_file",
    "validate_files",
    "validate_paths",
    "yaml_path",
]
