"""InstructLab's published JSON schemas (from the `instructlab-schema` package), applied as its parser does.

The verdict logic mirrors `instructlab.schema.taxonomy.TaxonomyParser` with `schema_version=0` (the
mode InstructLab's own tools use): the version comes from the file (default 1), the schema name from
the taxonomy folder (else `knowledge` when a `document` key is present), deprecated schemas are errors.
We do not call that parser itself because it shells out to `yamllint` and `yq` and prints its findings;
here every finding is returned with the line and column of the node at fault.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from instructlab.schema import schema_base, schema_versions
from jsonschema.exceptions import ValidationError
from jsonschema.validators import validator_for
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource
from referencing.jsonschema import DRAFT202012

SCHEMA_FOLDERS = ("compositional_skills", "knowledge")


@dataclass(frozen=True)
class SchemaViolation:
    """A schema finding: where in the data (JSON path parts) and what is wrong."""

    parts: tuple[str | int, ...]
    message: str


def supported_versions() -> list[int]:
    return [int(v.name[1:]) for v in schema_versions()]


def file_version(contents: Mapping[str, Any]) -> int:
    """The schema version a file asks for, read exactly as InstructLab reads it."""
    value = contents.get("version", 1)
    if isinstance(value, int):
        return value
    try:
        return int(value)
    except (ValueError, TypeError, OverflowError):  # OverflowError: version: .inf
        return 1  # the schema's type check then reports the bad value


def schema_name_for(taxonomy_parts: tuple[str, ...], contents: Mapping[str, Any]) -> str:
    """`knowledge` or `compositional_skills`, as InstructLab picks it."""
    if taxonomy_parts and taxonomy_parts[0] in SCHEMA_FOLDERS:
        return taxonomy_parts[0]
    return "knowledge" if "document" in contents else "compositional_skills"


@functools.lru_cache(maxsize=64)
def _resource(version: int, name: str) -> Resource[Any]:
    path = schema_base().joinpath(f"v{version}", name)
    try:
        contents = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise NoSuchResource(f"v{version}/{name}") from exc
    return Resource.from_contents(contents, default_specification=DRAFT202012)


@functools.lru_cache(maxsize=16)
def _validator(version: int, name: str) -> Any:
    schema = _resource(version, f"{name}.json").contents
    registry: Registry[Any] = Registry(retrieve=lambda uri: _resource(version, uri))  # type: ignore[call-arg]
    return validator_for(schema)(schema, registry=registry)


def validate(contents: Mapping[str, Any], *, version: int, name: str) -> Iterator[SchemaViolation]:
    """Yield every violation of schema `name` at `version`; unknown and deprecated versions included."""
    try:
        schema = _resource(version, f"{name}.json").contents
    except NoSuchResource:
        known = ", ".join(str(v) for v in supported_versions())
        yield SchemaViolation(("version",), f"unsupported schema version {version!r} (supported: {known})")
        return
    if isinstance(schema, Mapping) and schema.get("deprecated"):
        yield SchemaViolation(
            ("version",), str(schema.get("description") or f"{name} schema version {version} is deprecated")
        )
        return
    for error in _validator(version, name).iter_errors(contents):
        yield SchemaViolation(*_explain(error))


def _explain(error: ValidationError) -> tuple[tuple[str | int, ...], str]:
    """Say what is wrong in a user's words, and point at the exact node (an unknown key itself)."""
    parts = tuple(p for p in error.absolute_path if isinstance(p, str | int))
    kind = error.validator
    if kind == "minItems":
        return parts, f"Value must have at least {error.validator_value} items"
    if kind == "unevaluatedProperties" and isinstance(error.instance, Mapping):
        allowed = set(error.schema.get("properties", {})) if isinstance(error.schema, Mapping) else set()
        allowed |= {"version"}  # declared in the $ref'd version.json
        unknown = [k for k in error.instance if k not in allowed]
        if unknown:
            key = unknown[0]
            others = f" (and {', '.join(map(repr, unknown[1:]))})" if unknown[1:] else ""
            return (*parts, str(key)), (
                f"unknown key {key!r}{others}; allowed keys: {', '.join(sorted(allowed))}"
            )
    if kind == "required" and isinstance(error.validator_value, list):
        missing = [
            k
            for k in error.validator_value
            if isinstance(error.instance, Mapping) and k not in error.instance
        ]
        if missing:
            return parts, f"missing required key {missing[0]!r}"
    if kind == "uniqueItems":
        return parts, "items must be unique: two entries are identical"
    if kind == "minLength" and error.validator_value == 1:
        return parts, "must not be empty"
    if kind == "const" and parts == ("version",):
        return parts, f"version must be {error.validator_value}, found {error.instance!r}"
    return parts, error.message[-200:]
