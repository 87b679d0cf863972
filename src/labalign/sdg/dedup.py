"""Near-duplicate detection by ROUGE-L, as Self-Instruct filters its generated instructions."""

from __future__ import annotations

from labalign.textmetrics import rouge_l, tokens


class NearDuplicateIndex:
    """Texts kept so far; `find` returns the index of the first one a candidate near-duplicates."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self._kept: list[list[str]] = []

    def __len__(self) -> int:
        return len(self._kept)

    def add(self, text: str) -> None:
        self._kept.append(tokens(text))

    def find(self, text: str) -> int | None:
        candidate = tokens(text)
        for i, kept in enumerate(self._kept):
            # LCS cannot exceed the shorter length: skip pairs whose best possible F1 is too low.
            short, long_ = sorted((len(candidate), len(kept)))
            if long_ and 2 * short / (short + long_) < self.threshold:
                continue
            if rouge_l(candidate, kept) >= self.threshold:
                return i
        return None
