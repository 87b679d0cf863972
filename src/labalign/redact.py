"""Secrets out of everything labalign prints or stores.

A teacher or judge URL may carry credentials (``http://user:token@host/v1``); they reach the server
in the request but never the terminal, `manifest.json`, `report.html`, logs or cache keys. Redaction
happens where text leaves the process (errors, manifests, reports, console lines), so a new message
that quotes a URL is covered without each call site remembering to.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

MASK = "***"

# scheme://userinfo@ (userinfo may not hold '/', '@' or whitespace unencoded, per RFC 3986).
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#@\s'\"<>]+)@")
# Command-line options whose next argument (or `=value`) is a secret.
_SECRET_OPTIONS = ("--api-key", "--token", "--password")


def redact_text(text: str) -> str:
    """`text` with the user-info (user names, passwords, tokens) of every URL in it masked."""
    if "@" not in text:
        return text
    return _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)


def redact_argv(argv: Iterable[str]) -> list[str]:
    """A command line fit to store: URL credentials masked, and the values of secret options."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(MASK)
            hide_next = False
            continue
        name, eq, _ = arg.partition("=")
        if name in _SECRET_OPTIONS:
            if eq:
                out.append(f"{name}={MASK}")
            else:
                out.append(arg)
                hide_next = True
            continue
        out.append(redact_text(arg))
    return out


def redact_data(value: Any) -> Any:
    """A JSON-like value with `redact_text` applied to every string in it (keys included)."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {redact_data(k): redact_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(v) for v in value]
    return value
