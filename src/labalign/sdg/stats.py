"""The funnel: how many rows entered and left each block of each leaf, and why rows were dropped."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StageCount:
    block: str
    rows_in: int = 0
    rows_out: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    kept_without_output: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"block": self.block, "in": self.rows_in, "out": self.rows_out}
        out["dropped"] = dict(self.dropped)
        if self.kept_without_output:
            out["kept_without_output"] = dict(self.kept_without_output)
        return out


@dataclass
class LeafStats:
    """Counts for one leaf, in block order; every row that leaves the funnel has a reason."""

    leaf: str
    stages: dict[str, StageCount] = field(default_factory=dict)
    teacher_calls: int = 0
    teacher_tokens: int = 0
    kept: int = 0
    heldout: int = 0
    rounds: int = 0
    facts: int = 0  # of `kept`: fact questions (knowledge leaves)
    fact_sentences: int = 0  # document sentences asked about
    unasked_facts: list[str] = field(default_factory=list)  # sentences left without a kept question

    def stage(self, block: str) -> StageCount:
        if block not in self.stages:
            self.stages[block] = StageCount(block)
        return self.stages[block]

    def as_dict(self) -> dict[str, Any]:
        return {
            "leaf": self.leaf,
            "rounds": self.rounds,
            "teacher_calls": self.teacher_calls,
            "teacher_tokens": self.teacher_tokens,
            "kept": self.kept,
            "heldout": self.heldout,
            "facts": self.facts,
            "fact_sentences": self.fact_sentences,
            "unasked_facts": self.unasked_facts,
            "stages": [s.as_dict() for s in self.stages.values()],
        }


def failed_calls(stats: dict[str, Any]) -> tuple[int, int, Counter[str]]:
    """From stats.json: (teacher calls made, of them failed, failures by kind). Failures are never
    cached, so every failed result was a call of this run."""
    calls = sum(int(leaf.get("teacher_calls") or 0) for leaf in stats.get("leaves", []))
    kinds: Counter[str] = Counter()
    for leaf in stats.get("leaves", []):
        for stage in leaf.get("stages", []):
            for counts in (stage.get("dropped") or {}, stage.get("kept_without_output") or {}):
                for reason, n in counts.items():
                    if reason.startswith("error:"):
                        kinds[reason.removeprefix("error:")] += int(n)
    return calls, sum(kinds.values()), kinds
