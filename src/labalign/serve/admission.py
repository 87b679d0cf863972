"""How much work the server takes on: work it cannot finish in time is refused at once (503 with
Retry-After), never queued until the client gives up while the server goes on computing for nobody.

Work is counted in *budget tokens*: choices x max_tokens, what a request may cost at most. The server
measures how many budget tokens per second its backend gets through (over the last batches) and admits
a request only when the work already admitted, plus this one, is expected to be done within
`max_wait_s`. Before anything has been measured, at most `max_queue` choices are admitted.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

# Weight of the newest batch in the throughput estimate: recent enough to follow load from other
# processes on the machine, smooth enough that one short batch does not swing admission.
_EWMA = 0.3


class Overloaded(Exception):
    """A request refused for now; `retry_after_s` says when trying again should succeed."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Ticket:
    choices: int
    tokens: int


class Admission:
    """Counts admitted work and decides on each new request. Thread-safe; cheap."""

    def __init__(self, *, max_wait_s: float = 30.0, max_queue: int = 64) -> None:
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._lock = threading.Lock()
        self._choices = 0
        self._tokens = 0
        self._rate: float | None = None  # budget tokens per second
        self.draining = False

    @property
    def pending(self) -> tuple[int, int]:
        """(choices, budget tokens) admitted and not finished."""
        with self._lock:
            return self._choices, self._tokens

    def admit(self, choices: int, tokens: int) -> Ticket:
        """A ticket to hand back with `release`, or Overloaded."""
        with self._lock:
            if self.draining:
                raise Overloaded("the server is shutting down", retry_after_s=5)
            # One request alone is always admitted: a limit that refused it forever would be a 400.
            if self._choices > 0:
                if self._choices + choices > self.max_queue:
                    raise Overloaded(
                        f"the server is busy ({self._choices} answers in progress or queued, at most "
                        f"{self.max_queue})",
                        retry_after_s=self._retry_after(self._tokens),
                    )
                if self._rate is not None:
                    wait = (self._tokens + tokens) / self._rate
                    if wait > self.max_wait_s:
                        raise Overloaded(
                            f"the server is busy: this request would finish in about {wait:.0f} s, over its "
                            f"limit of {self.max_wait_s:.0f} s",
                            retry_after_s=self._retry_after(
                                self._tokens + tokens - self._rate * self.max_wait_s
                            ),
                        )
            self._choices += choices
            self._tokens += tokens
            return Ticket(choices, tokens)

    def release(self, ticket: Ticket) -> None:
        with self._lock:
            self._choices -= ticket.choices
            self._tokens -= ticket.tokens

    def record(self, tokens: int, seconds: float) -> None:
        """A batch of `tokens` budget tokens took `seconds`: update the throughput estimate."""
        if tokens <= 0 or seconds <= 0:
            return
        rate = tokens / seconds
        with self._lock:
            self._rate = rate if self._rate is None else (1 - _EWMA) * self._rate + _EWMA * rate

    def _retry_after(self, tokens: float) -> int:
        if self._rate is None:
            return 1
        return max(1, min(60, math.ceil(tokens / self._rate)))
