"""The funnel: how many rows entered and left each block of each leaf, and why rows were dropped.

Counted while generating (StageCount, LeafStats), kept in the output folder as stats.json, which is
the GenerationStats model: the CLI's funnel table, `labalign run` and the report read it through it.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from labalign.errors import LabalignError
from labalign.fileio import write_text_atomic

STATS_FILE = "stats.json"


class BlockFunnel(BaseModel):
    """One block of a leaf's pipeline: rows in, rows out, and why rows were dropped."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    block: str
    rows_in: int = Field(alias="in")
    rows_out: int = Field(alias="out")
    dropped: dict[str, int] = Field(default_factory=dict)
    kept_without_output: dict[str, int] | None = None  # rows kept although a block gave them no value


class LeafFunnel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    leaf: str
    rounds: int = 0
    teacher_calls: int = 0
    teacher_tokens: int = 0
    kept: int = 0
    heldout: int = 0
    facts: int = 0  # of `kept`: fact questions (knowledge leaves)
    fact_sentences: int = 0  # document sentences asked about (0 in stats.json written before counting)
    unasked_facts: list[str] = Field(default_factory=list)
    stages: list[BlockFunnel] = Field(default_factory=list)


class GenerationStats(BaseModel):
    """stats.json of a generation folder."""

    model_config = ConfigDict(extra="forbid")

    teacher: str
    judge: str
    seed: int
    samples_per_leaf: int
    phase1_records: int
    phase2_records: int
    leaves: list[LeafFunnel]

    def save(self, out_dir: Path) -> None:
        data = self.model_dump(by_alias=True, exclude_none=True)
        write_text_atomic(out_dir / STATS_FILE, json.dumps(data, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, out_dir: Path) -> GenerationStats:
        """The folder's stats.json; a missing or damaged one is a one-line error."""
        path = out_dir / STATS_FILE
        if not path.is_file():
            raise LabalignError(
                "no stats.json here", path=out_dir, hint="run `labalign generate ... --out` on it first"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LabalignError(f"not valid JSON ({exc})", path=path, hint="generate again") from exc
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise LabalignError(
                f"not the stats.json of a generation ({str(exc).splitlines()[0]})",
                path=path,
                hint="generate again",
            ) from exc

    def failed_calls(self) -> tuple[int, int, Counter[str]]:
        """(teacher calls made, of them failed, failures by kind). Failures are never cached, so every
        failed result was a call of this run."""
        calls = sum(leaf.teacher_calls for leaf in self.leaves)
        kinds: Counter[str] = Counter()
        for leaf in self.leaves:
            for stage in leaf.stages:
                for counts in (stage.dropped, stage.kept_without_output or {}):
                    for reason, n in counts.items():
                        if reason.startswith("error:"):
                            kinds[reason.removeprefix("error:")] += n
        return calls, sum(kinds.values()), kinds


@dataclass
class StageCount:
    block: str
    rows_in: int = 0
    rows_out: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    kept_without_output: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def record(self) -> BlockFunnel:
        return BlockFunnel(
            block=self.block,
            rows_in=self.rows_in,
            rows_out=self.rows_out,
            dropped=dict(self.dropped),
            kept_without_output=dict(self.kept_without_output) if self.kept_without_output else None,
        )


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

    def record(self) -> LeafFunnel:
        return LeafFunnel(
            leaf=self.leaf,
            rounds=self.rounds,
            teacher_calls=self.teacher_calls,
            teacher_tokens=self.teacher_tokens,
            kept=self.kept,
            heldout=self.heldout,
            facts=self.facts,
            fact_sentences=self.fact_sentences,
            unasked_facts=self.unasked_facts,
            stages=[s.record() for s in self.stages.values()],
        )
