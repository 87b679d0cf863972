"""Positions of YAML nodes: JSON path <-> yq-style path <-> line and column."""

from __future__ import annotations

from collections.abc import Sequence

import yaml

from labalign import yamlsafe


def yaml_path(parts: Sequence[str | int]) -> str:
    """('seed_examples', 0, 'question') -> '.seed_examples[0].question' (yq style, as InstructLab prints)."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out or "."


def path_at(root: yaml.Node | None, line: int, column: int) -> str:
    """The yq-style path of the deepest node that spans a 1-based position (for lint findings)."""
    parts: list[str | int] = []
    node = root
    target = (line - 1, column - 1)

    def spans(n: yaml.Node) -> bool:
        start = (n.start_mark.line, n.start_mark.column)
        end = (n.end_mark.line, n.end_mark.column)
        return start <= target <= end

    while node is not None:
        nxt: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if spans(key) or spans(value):
                    parts.append(str(key.value) if isinstance(key, yaml.ScalarNode) else "?")
                    nxt = value
                    break
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                if spans(item):
                    parts.append(i)
                    nxt = item
                    break
        node = nxt
    return yaml_path(parts)


class NodeLocator:
    """Finds line, column and yaml path of a leaf's fields from the parsed node tree."""

    def __init__(self, root: yaml.Node | None) -> None:
        self.root = root

    def at(self, parts: Sequence[str | int], *, prefer_key: bool = False) -> tuple[int, int, str]:
        node, key = yamlsafe.node_at(self.root, list(parts))
        line, col = yamlsafe.position(key if prefer_key and key is not None else node)
        return line, col, yaml_path(parts)

    def _qna_parts(self, seed: int, qna: int | None, name: str) -> list[str | int]:
        if qna is None:
            return ["seed_examples", seed, name]
        return ["seed_examples", seed, "questions_and_answers", qna, name]

    def question(self, seed: int, qna: int | None) -> tuple[int, int, str]:
        return self.at(self._qna_parts(seed, qna, "question"))

    def answer(self, seed: int, qna: int | None) -> tuple[int, int, str]:
        return self.at(self._qna_parts(seed, qna, "answer"))

    def field(self, seed: int, name: str) -> tuple[int, int, str]:
        return self.at(["seed_examples", seed, name])
