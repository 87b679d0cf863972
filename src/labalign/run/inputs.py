"""What a run reads, hashed: taxonomy files, knowledge documents and held-out questions. A stage's
fingerprint covers the inputs and settings it depends on, so a re-run knows what changed and names it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from labalign.config import Settings
from labalign.taxonomy import Leaf
from labalign.taxonomy.documents import resolve_leaf_documents

_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _files(root: Path) -> Iterable[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and ".git" not in path.relative_to(root).parts:
            yield path


def collect_inputs(
    taxonomy: Path, leaves: Iterable[Leaf], heldout: Path | None, settings: Settings
) -> dict[str, str]:
    """{'taxonomy/<file>' | 'documents/<leaf>/<file>' | 'heldout/<file>': sha256}."""
    out: dict[str, str] = {}
    for path in _files(taxonomy):
        out[f"taxonomy/{path.relative_to(taxonomy).as_posix()}"] = file_sha256(path)
    for leaf in leaves:
        if leaf.document is None:
            continue
        files = resolve_leaf_documents(leaf.document, leaf.path.parent, leaf.taxonomy_root, settings) or []
        for f in files:
            # A git document is pinned by its commit; its content hash still catches a dirty cache.
            out[f"documents/{leaf.name}/{f.relpath}"] = file_sha256(f.path)
    if heldout is not None and heldout.is_dir():
        for path in _files(heldout):
            out[f"heldout/{path.relative_to(heldout).as_posix()}"] = file_sha256(path)
    return out


def changed_inputs(before: Mapping[str, str], after: Mapping[str, str]) -> list[str]:
    """'<file> (changed|added|removed)' for every difference, sorted."""
    out = [f"{k} (changed)" for k in before.keys() & after.keys() if before[k] != after[k]]
    out += [f"{k} (added)" for k in after.keys() - before.keys()]
    out += [f"{k} (removed)" for k in before.keys() - after.keys()]
    return sorted(out)


def changed_settings(before: Mapping[str, Any], after: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose value differs, e.g. 'train.epochs: 2 -> 3'."""
    out: list[str] = []
    for key in sorted(before.keys() | after.keys()):
        a, b = before.get(key), after.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += changed_settings(a, b, name + ".")
        elif a != b:
            out.append(f"{name}: {json.dumps(a)} -> {json.dumps(b)}")
    return out


def fingerprint(*parts: Any) -> str:
    """A stable hash of JSON-able parts (sorted keys), for stage fingerprints."""
    body = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def subset(inputs: Mapping[str, str], prefix: str) -> dict[str, str]:
    return {k: v for k, v in inputs.items() if k.startswith(prefix)}
