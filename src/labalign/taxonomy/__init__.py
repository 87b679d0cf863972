"""Taxonomies: discovery, InstructLab-compatible validation, diff, and leaves for generation."""

from labalign.taxonomy.diff import DiffResult, changed_files
from labalign.taxonomy.discover import TaxonomyFile, discover, find_root, require_files
from labalign.taxonomy.leaf import Leaf, LeafKind, QnA, SeedExample
from labalign.taxonomy.problems import FileReport, Problem, ValidationReport
from labalign.taxonomy.validate import (
    ValidationOptions,
    ValidationResult,
    load_leaves,
    validate_files,
    validate_paths,
)

__all__ = [
    "DiffResult",
    "FileReport",
    "Leaf",
    "LeafKind",
    "Problem",
    "QnA",
    "SeedExample",
    "TaxonomyFile",
    "ValidationOptions",
    "ValidationReport",
    "ValidationResult",
    "changed_files",
    "discover",
    "find_root",
    "load_leaves",
    "require_files",
    "validate_files",
    "validate_paths",
]
