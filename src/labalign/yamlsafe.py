"""Safe YAML reading that keeps node positions, so every problem can point at a line and column.

PyYAML's safe loader already refuses arbitrary Python objects; on top of it we bound the input size,
the nesting depth and the size of the tree once aliases are expanded (a "billion laughs" file is a
few hundred bytes that expands to billions of nodes when a validator walks it).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from labalign.errors import LabalignError

MAX_YAML_BYTES = 8 * 2**20
MAX_EXPANDED_NODES = 1_000_000
MAX_DEPTH = 200
_IN_PROGRESS = -1

# The pure-Python loader, as `yaml.safe_load` (and so InstructLab) uses: libyaml's accepts and
# rejects a few inputs differently, and verdicts must match InstructLab's file for file.
_Loader = yaml.SafeLoader


class YamlError(LabalignError):
    """A YAML file that cannot be read at all."""


@dataclass(frozen=True)
class YamlDocument:
    """A parsed YAML file: the plain data and the node tree it came from (for positions)."""

    data: Any
    root: yaml.Node | None
    text: str


def read_text(path: Path, *, max_bytes: int = MAX_YAML_BYTES) -> str:
    """Read a YAML file as UTF-8 text, refusing huge or undecodable files with a clear error."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise YamlError(
                f"file is {size} bytes, over the {max_bytes}-byte limit",
                path=path,
                hint="a qna.yaml or config file should be a few kilobytes; check that this is the right file",
            )
        raw = path.read_bytes()
    except OSError as exc:
        raise YamlError(f"cannot read file: {exc.strerror or exc}", path=path) from exc
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise YamlError("file is not valid UTF-8", path=path, line=line, hint="save it as UTF-8") from exc


def parse(text: str, *, path: str | Path) -> YamlDocument:
    """Parse one YAML document safely; raises YamlError (with line and column) on any failure."""
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        raise _marked(exc, "YAML syntax error", path, "fix the indentation or quoting at that spot") from exc
    except yaml.YAMLError as exc:
        raise YamlError(f"YAML syntax error: {exc}", path=path) from exc
    except RecursionError as exc:
        raise YamlError("YAML nesting is too deep", path=path) from exc
    if root is None:
        return YamlDocument(data=None, root=None, text=text)
    _check_tree(root, path)
    try:
        data = _Loader(text).construct_document(root)
    except yaml.MarkedYAMLError as exc:
        hint = "only plain strings, numbers, lists and mappings are allowed"
        raise _marked(exc, "YAML value cannot be read", path, hint) from exc
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
        # SafeConstructor raises ValueError/OverflowError on e.g. out-of-range dates.
        raise YamlError(f"YAML value cannot be read: {exc}", path=path) from exc
    return YamlDocument(data=data, root=root, text=text)


def _marked(exc: yaml.MarkedYAMLError, what: str, path: str | Path, hint: str) -> YamlError:
    """A YamlError at the position PyYAML marked."""
    mark = exc.problem_mark or exc.context_mark
    return YamlError(
        f"{what}: {exc.problem or exc.context or 'invalid YAML'}",
        path=path,
        line=mark.line + 1 if mark else None,
        column=mark.column + 1 if mark else None,
        hint=hint,
    )


def load(path: Path, *, max_bytes: int = MAX_YAML_BYTES) -> YamlDocument:
    """Read and parse a YAML file safely."""
    return parse(read_text(path, max_bytes=max_bytes), path=path)


def _check_tree(root: yaml.Node, path: str | Path) -> None:
    """Bound depth and alias-expanded size, walking each distinct node once."""
    sizes: dict[int, int] = {}
    depth_limit = min(MAX_DEPTH, sys.getrecursionlimit() // 4)

    def size(node: yaml.Node, depth: int) -> int:
        known = sizes.get(id(node))
        if known == _IN_PROGRESS:
            raise YamlError(
                "YAML alias refers to a node that contains it (a recursive structure)",
                path=path,
                line=node.start_mark.line + 1,
                column=node.start_mark.column + 1,
                hint="remove the alias (*) inside its own anchor (&)",
            )
        if known is not None:
            return known
        if depth > depth_limit:
            raise YamlError(
                f"YAML nesting is deeper than {depth_limit} levels",
                path=path,
                line=node.start_mark.line + 1,
                column=node.start_mark.column + 1,
            )
        sizes[id(node)] = _IN_PROGRESS
        total = 1
        if isinstance(node, yaml.SequenceNode):
            for child in node.value:
                total += size(child, depth + 1)
        elif isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                total += size(key, depth + 1) + size(value, depth + 1)
        if total > MAX_EXPANDED_NODES:
            raise YamlError(
                f"YAML expands to more than {MAX_EXPANDED_NODES} values through aliases",
                path=path,
                line=node.start_mark.line + 1,
                column=node.start_mark.column + 1,
                hint="remove the repeated anchors (&) and aliases (*)",
            )
        sizes[id(node)] = total
        return total

    size(root, 0)


def node_at(root: yaml.Node | None, parts: list[str | int]) -> tuple[yaml.Node | None, yaml.Node | None]:
    """Walk a node tree along a JSON path; return (the value node reached, the key node naming it).

    Stops at the deepest node that exists, so a path into a missing key still gives a useful line.
    """
    node = root
    key_node: yaml.Node | None = None
    for part in parts:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == part:
                    node, key_node = value, key
                    break
            else:
                return node, key_node
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node, key_node = node.value[part], None
        else:
            return node, key_node
    return node, key_node


def position(node: yaml.Node | None) -> tuple[int, int]:
    """1-based (line, column) of a node, (1, 1) when unknown."""
    if node is None:
        return 1, 1
    return node.start_mark.line + 1, node.start_mark.column + 1
