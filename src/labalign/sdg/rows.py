"""Rows flowing through a pipeline: plain dicts with a stable id, derived deterministically."""

from __future__ import annotations

import hashlib
from typing import Any

Row = dict[str, Any]
ROW_ID = "_id"


def child_id(parent: Row, *parts: object) -> str:
    """A new row's id from its parent's and what made it (block name, choice index...)."""
    return "/".join([str(parent[ROW_ID]), *(str(p) for p in parts)])


def stable_int(text: str, bits: int = 62) -> int:
    """A process-independent integer from text (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") >> (64 - bits)
