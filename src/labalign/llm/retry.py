"""Retry policy for remote model calls: exponential backoff with full jitter, Retry-After, error kinds."""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

from labalign.llm.types import ErrorKind

RETRYABLE: frozenset[ErrorKind] = frozenset(
    {"connection", "timeout", "rate_limited", "server", "bad_response"}
)
"""Error kinds worth another attempt; the others would fail the same way again."""

MAX_BAD_RESPONSE_ATTEMPTS = 3
"""A server that sends unparseable bodies is usually broken, not flaky: two retries, then report."""

_CONTEXT_PATTERNS = re.compile(
    r"maximum context length|context[ _]length|context window|context size|"
    r"too many tokens|prompt is too long|exceeds? the (?:available )?context",
    re.IGNORECASE,
)


def backoff_delay(retry: int, *, base_s: float, max_s: float, rng: random.Random) -> float:
    """Full jitter (AWS architecture blog): uniform in [0, min(max_s, base_s * 2**retry)].

    `retry` counts from 0 for the wait before the second attempt. Full jitter spreads the retries of
    many clients hit by the same overload, so they do not come back in lockstep.
    """
    bound = min(max_s, base_s * math.pow(2.0, min(retry, 60)))
    return rng.uniform(0.0, bound) if bound > 0 else 0.0


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Wait asked for by `retry-after-ms` (OpenAI) or `retry-after` (seconds or HTTP date); None if absent."""
    lowered = {k.lower(): v for k, v in headers.items()}
    raw_ms = lowered.get("retry-after-ms")
    if raw_ms is not None:
        try:
            ms = float(raw_ms)
        except ValueError:
            ms = math.nan
        if math.isfinite(ms) and ms >= 0:
            return ms / 1000.0
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive one is read as such
            return None
        current = time.time() if now is None else now
        return max(0.0, when.timestamp() - current)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def retry_wait(
    retry: int,
    *,
    retry_after: float | None,
    base_s: float,
    max_s: float,
    rng: random.Random,
) -> float:
    """The wait before the next attempt: the server's Retry-After when it sent one (capped), else backoff."""
    if retry_after is not None:
        return min(retry_after, max_s)
    return backoff_delay(retry, base_s=base_s, max_s=max_s, rng=rng)


def is_context_length_message(message: str) -> bool:
    """True for the ways servers (OpenAI, vLLM, llama.cpp, TGI) say the prompt does not fit."""
    return bool(_CONTEXT_PATTERNS.search(message))


def kind_for_status(status: int, message: str) -> ErrorKind:
    """Error kind of an HTTP error status; `message` tells a context overflow from other bad requests."""
    if status == 429:
        return "rate_limited"
    if status == 408:
        return "timeout"
    if status >= 500:
        return "server"
    if is_context_length_message(message):
        return "context_length"
    return "invalid_request"
