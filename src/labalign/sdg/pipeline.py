"""Declarative pipelines: YAML files listing blocks, shipped with the package or written by users."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from labalign import yamlsafe
from labalign.errors import LabalignError
from labalign.sdg.blocks import (
    BlockConfig,
    LLMBlockConfig,
    MeltBlockConfig,
    ParseBlockConfig,
    SimilarityBlockConfig,
)
from labalign.sdg.prompts import PromptLibrary

PACKAGE_PIPELINES = Path(__file__).parent / "pipelines"
# knowledge_facts: the question-per-sentence pipeline of knowledge leaves (labalign.sdg.facts); its
# rows come with the answer (the sentence), so it only has to produce the question.
PipelineKind = Literal["freeform_skill", "grounded_skill", "knowledge", "knowledge_facts"]
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "freeform_skill": ("question", "answer"),
    "grounded_skill": ("context", "question", "answer"),
    "knowledge": ("context", "question", "answer"),
    "knowledge_facts": ("question",),
}


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    kind: PipelineKind
    description: str = ""
    examples_per_prompt: int = Field(3, ge=1, le=20, description="Seed examples shown in each prompt.")
    oversample: float = Field(2.0, ge=1.0, description="Input rows per wanted sample (filters drop some).")
    max_rounds: int = Field(4, ge=1, description="Rounds of generation until the leaf has enough samples.")
    blocks: list[BlockConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _names_unique_and_outputs_made(self) -> PipelineConfig:
        names = [b.name for b in self.blocks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"block names must be unique: {', '.join(dupes)}")
        made: set[str] = set()
        for block in self.blocks:
            if isinstance(block, LLMBlockConfig | MeltBlockConfig):
                made.add(block.output)
            if isinstance(block, ParseBlockConfig):
                made.update(_groups(block.pattern))
            if isinstance(block, SimilarityBlockConfig) and block.output:
                made.add(block.output)
        missing = [c for c in REQUIRED_COLUMNS[self.kind] if c not in made and c != "context"]
        if missing:
            raise ValueError(f"no block produces the column(s) {', '.join(missing)}")
        return self


def _groups(pattern: str) -> set[str]:
    import re

    try:
        return set(re.compile(pattern).groupindex)
    except re.error as exc:
        raise ValueError(f"invalid regex {pattern!r}: {exc}") from exc


class Pipeline:
    """A loaded pipeline and the prompt library its templates come from."""

    def __init__(self, config: PipelineConfig, path: Path) -> None:
        self.config = config
        self.path = path
        self.prompts = PromptLibrary([path.parent] if path.parent != PACKAGE_PIPELINES else [])
        for block in config.blocks:
            if isinstance(block, LLMBlockConfig):
                self.prompts.check(block.prompt)


def load_pipeline(path: Path) -> Pipeline:
    """Read and check a pipeline file; errors name the file and the line of the offending block."""
    try:
        doc = yamlsafe.load(path)
    except LabalignError:
        raise
    try:
        config = PipelineConfig.model_validate(doc.data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [p for p in err["loc"] if isinstance(p, str | int)]
        node, key = yamlsafe.node_at(doc.root, [p for p in loc if not (isinstance(p, str) and "Config" in p)])
        line, column = yamlsafe.position(key or node)
        where = ".".join(str(p) for p in loc) or "pipeline"
        raise LabalignError(
            f"{where}: {err['msg']}",
            path=path,
            line=line,
            column=column,
            hint="compare with the shipped pipelines: labalign generate --help",
        ) from exc
    return Pipeline(config, path)


def builtin_pipeline(kind: PipelineKind) -> Pipeline:
    return load_pipeline(PACKAGE_PIPELINES / f"{kind}.yaml")
