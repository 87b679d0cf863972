"""Read and validate messages JSONL: `{id, messages: [{role, content}], metadata, unmask}` per line.

A record whose only message has the role `pretraining` (InstructLab training's name for it) is plain
text trained on every token (raw documents, pre-training style).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labalign.errors import LabalignError
from labalign.jsonl import iter_jsonl

ROLES = ("system", "user", "assistant")
PRETRAINING = "pretraining"
_SHAPE_HINT = 'each line must be {"messages": [{"role": ..., "content": ...}, ...]}'


@dataclass(frozen=True)
class Sample:
    """One conversation and where it came from (for error messages and tracing)."""

    id: str
    messages: tuple[tuple[str, str], ...]  # (role, content)
    unmask: bool
    path: str
    line: int

    @property
    def key(self) -> str:
        """Content hash: the same conversation replayed in another file gets the same key."""
        text = json.dumps([list(m) for m in self.messages], ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def is_pretraining(self) -> bool:
        return self.messages[0][0] == PRETRAINING

    def as_chat(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]


def read_samples(path: Path, *, flag: str = "the data file") -> list[Sample]:
    """Every record of a JSONL file; the first bad line raises a LabalignError naming file and line."""
    if not path.is_file():
        raise LabalignError("data file not found", path=path, hint=f"check {flag}")
    samples = [_sample(record, path, number) for number, record in iter_jsonl(path)]
    if not samples:
        raise LabalignError("no samples in the data file", path=path, hint=_SHAPE_HINT)
    return samples


def _sample(record: Any, path: Path, line: int) -> Sample:
    def bad(message: str, hint: str = _SHAPE_HINT) -> LabalignError:
        return LabalignError(message, path=path, line=line, hint=hint)

    if not isinstance(record, dict):
        raise bad(f"expected a JSON object, got {type(record).__name__}")
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("'messages' must be a non-empty list")
    if isinstance(messages[0], dict) and messages[0].get("role") == PRETRAINING:
        parsed = [_pretraining(messages, bad)]
    else:
        parsed = _chat(messages, bad)
    unmask = record.get("unmask", False)
    if not isinstance(unmask, bool):
        raise bad("'unmask' must be true or false", hint="unmask: true also trains the user turns")
    raw_id = record.get("id")
    sample_id = str(raw_id) if raw_id is not None else f"{path.name}:{line}"
    return Sample(id=sample_id, messages=tuple(parsed), unmask=unmask, path=str(path), line=line)


def _pretraining(messages: list[Any], bad: Callable[..., LabalignError]) -> tuple[str, str]:
    content = messages[0].get("content")
    if len(messages) != 1 or not isinstance(content, str) or not content.strip():
        raise bad(
            "a pretraining record is one message with non-empty text",
            hint='write {"messages": [{"role": "pretraining", "content": "..."}]}',
        )
    return PRETRAINING, content


def _chat(messages: list[Any], bad: Callable[..., LabalignError]) -> list[tuple[str, str]]:
    parsed: list[tuple[str, str]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad(f"messages[{i}] must be an object with 'role' and 'content'")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise bad(
                f"messages[{i}].role must be one of {', '.join(ROLES)} (or a lone {PRETRAINING} message), "
                f"got {role!r}"
            )
        if not isinstance(content, str):
            raise bad(f"messages[{i}].content must be a string")
        if role == "system" and i != 0:
            raise bad(f"messages[{i}]: a system message may only come first")
        parsed.append((role, content))
    if not any(role == "assistant" and content.strip() for role, content in parsed):
        raise bad(
            "no assistant turn with content: nothing to learn from this sample",
            hint="add an assistant message or remove the line",
        )
    return parsed


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
