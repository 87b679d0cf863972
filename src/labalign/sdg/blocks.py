"""Pipeline blocks: each takes the rows of one leaf and returns new rows, counting every drop."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from labalign.llm.types import Backend, GenerationParams, LLMRequest, LLMResult, Message
from labalign.sdg.dedup import DedupMethod, near_duplicate_index
from labalign.sdg.prompts import PromptLibrary
from labalign.sdg.rows import ROW_ID, Row, child_id, stable_int
from labalign.sdg.stats import LeafStats
from labalign.textmetrics import rouge_l, token_f1, tokens


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="Unique name of the block in its pipeline (used in stats).")


class LLMBlockConfig(_Block):
    type: Literal["llm"]
    prompt: str = Field(description="Template file name (package prompts or a path next to the pipeline).")
    output: str = Field(description="Column that receives the model's text.")
    role: Literal["teacher", "judge"] = "teacher"
    n: int = Field(1, ge=1, le=64, description="Choices per row; each becomes its own row.")
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(256, ge=1)
    stop: list[str] = Field(default_factory=lambda: ["[End]"])
    required: bool = Field(
        True, description="Drop the row when the call fails (else keep it without output)."
    )


class ParseBlockConfig(_Block):
    type: Literal["parse"]
    input: str
    pattern: str = Field(description="Regex with named groups; each group becomes a column.")
    prefix: str = Field("", description="Text put before the input (e.g. the tag the prompt ended with).")
    all_matches: bool = Field(False, description="One row per match instead of the first match only.")
    max_matches: int = Field(8, ge=1)


class FilterBlockConfig(_Block):
    type: Literal["filter"]
    column: str
    op: Literal["eq", "ne", "ge", "le", "in"]
    value: Any
    convert: Literal["int", "float", "str", "upper"] = "str"


class DedupBlockConfig(_Block):
    type: Literal["dedup"]
    column: str
    threshold: float = Field(
        0.7, gt=0.0, le=1.0, description="ROUGE-L F1 at or above which rows are duplicates."
    )
    against_seeds: bool = Field(True, description="Also drop rows that near-copy a seed example.")
    method: DedupMethod | None = Field(
        None,
        description="rouge: compare with every kept row; minhash: MinHash LSH candidates checked with "
        "ROUGE-L (large sets); auto: minhash from 1000 rows; unset: the sdg.dedup setting.",
    )


class SimilarityBlockConfig(_Block):
    type: Literal["similarity"]
    a: str = Field(description="Column compared...")
    b: str = Field(description="...with this one.")
    metric: Literal["rouge_l", "token_f1"] = "rouge_l"
    min: float = Field(0.0, ge=0.0, le=1.0, description="Drop rows scoring below this (unrelated).")
    max: float = Field(1.0, ge=0.0, le=1.0, description="Drop rows scoring above this (copied).")
    output: str | None = Field(None, description="Column that receives the score (unset: none).")


class MeltBlockConfig(_Block):
    type: Literal["melt"]
    columns: list[str] = Field(min_length=1, description="Each of these columns becomes its own row...")
    output: str = Field(description="...in this column,")
    kind_column: str = Field("context_kind", description="...with the source column's name here.")


BlockConfig = Annotated[
    LLMBlockConfig
    | ParseBlockConfig
    | FilterBlockConfig
    | SimilarityBlockConfig
    | DedupBlockConfig
    | MeltBlockConfig,
    Field(discriminator="type"),
]


@dataclass
class BlockContext:
    """What blocks share while one leaf runs."""

    leaf: str
    teacher: Backend
    judge: Backend
    prompts: PromptLibrary
    stats: LeafStats
    seed: int
    chat: bool  # send prompts as one user message (instruct models) rather than raw completion
    seed_texts: dict[str, list[str]] = field(default_factory=dict)  # column -> the leaf's seed texts
    dedup: DedupMethod = "auto"  # for dedup blocks that do not name a method
    on_progress: Callable[[str, int], None] | None = None  # (block name, rows done)


async def run_block(config: BlockConfig, rows: list[Row], ctx: BlockContext) -> list[Row]:
    stage = ctx.stats.stage(config.name)
    stage.rows_in += len(rows)
    if isinstance(config, LLMBlockConfig):
        out = await _llm(config, rows, ctx)
    elif isinstance(config, ParseBlockConfig):
        out = _parse(config, rows, ctx)
    elif isinstance(config, FilterBlockConfig):
        out = _filter(config, rows, ctx)
    elif isinstance(config, SimilarityBlockConfig):
        out = _similarity(config, rows, ctx)
    elif isinstance(config, DedupBlockConfig):
        out = _dedup(config, rows, ctx)
    else:
        out = _melt(config, rows)
    stage.rows_out += len(out)
    return out


def _request(config: LLMBlockConfig, row: Row, ctx: BlockContext, choice: int) -> LLMRequest:
    text = ctx.prompts.render(config.prompt, row)
    # A per-row seed makes sampling reproducible on servers that honour it; sample_index keeps the
    # n choices of one row distinct in the request cache.
    seed = stable_int(f"{ctx.seed}/{row[ROW_ID]}/{config.name}/{choice}", bits=31)
    params = GenerationParams(
        temperature=config.temperature,
        top_p=config.top_p,
        max_tokens=config.max_tokens,
        stop=tuple(config.stop),
        seed=seed,
    )
    if ctx.chat:
        return LLMRequest(messages=(Message("user", text),), params=params, sample_index=choice, tag=ctx.leaf)
    return LLMRequest(prompt=text, params=params, sample_index=choice, tag=ctx.leaf)


async def _llm(config: LLMBlockConfig, rows: list[Row], ctx: BlockContext) -> list[Row]:
    backend = ctx.judge if config.role == "judge" else ctx.teacher
    requests = [_request(config, row, ctx, k) for row in rows for k in range(config.n)]
    done = 0

    def progress(_: LLMResult) -> None:
        nonlocal done
        done += 1
        if ctx.on_progress is not None:
            ctx.on_progress(config.name, done)

    results = await backend.generate(requests, on_result=progress)
    stage = ctx.stats.stage(config.name)
    out: list[Row] = []
    for i, result in enumerate(results):
        row, k = rows[i // config.n], i % config.n
        if not result.cached:
            ctx.stats.teacher_calls += 1
        ctx.stats.teacher_tokens += result.prompt_tokens + result.completion_tokens
        text = result.text.strip() if result.ok else ""
        if not text:
            reason = f"error:{result.error.kind}" if result.error else "empty_output"
            if config.required:
                stage.dropped[reason] += 1
            elif k == 0:  # an optional output: the row goes on without it (counted, not dropped)
                stage.kept_without_output[reason] += 1
                out.append(dict(row))
            continue
        new = dict(row)
        new[ROW_ID] = child_id(row, config.name, k) if config.n > 1 else row[ROW_ID]
        new[config.output] = text
        out.append(new)
    return out


def _parse(config: ParseBlockConfig, rows: list[Row], ctx: BlockContext) -> list[Row]:
    pattern = re.compile(config.pattern, re.DOTALL)
    stage = ctx.stats.stage(config.name)
    out: list[Row] = []
    for row in rows:
        text = config.prefix + str(row.get(config.input, ""))
        matches = list(pattern.finditer(text))[: config.max_matches if config.all_matches else 1]
        kept = 0
        for m, match in enumerate(matches):
            values = {k: v.strip() for k, v in match.groupdict().items() if v is not None}
            if not values or not all(values.values()):
                continue
            new = {**row, **values}
            if config.all_matches:
                new[ROW_ID] = child_id(row, config.name, m)
            out.append(new)
            kept += 1
        if kept == 0:
            stage.dropped["unparseable"] += 1
    return out


def _convert(value: Any, how: str) -> Any:
    if how == "int":
        return int(str(value).strip())
    if how == "float":
        return float(str(value).strip())
    if how == "upper":
        return str(value).strip().upper()
    return str(value)


def _compare(op: str, value: Any, target: Any) -> bool:
    if op == "eq":
        return bool(value == target)
    if op == "ne":
        return bool(value != target)
    if op == "ge":
        return bool(value >= target)
    if op == "le":
        return bool(value <= target)
    return value in target


def _filter(config: FilterBlockConfig, rows: list[Row], ctx: BlockContext) -> list[Row]:
    stage = ctx.stats.stage(config.name)
    target = (
        [_convert(v, config.convert) for v in config.value]
        if config.op == "in"
        else _convert(config.value, config.convert)
    )
    out: list[Row] = []
    for row in rows:
        try:
            value = _convert(row.get(config.column), config.convert)
        except (TypeError, ValueError):
            stage.dropped["unparseable_value"] += 1
            continue
        if _compare(config.op, value, target):
            out.append(row)
        else:
            stage.dropped[f"{config.column}={value}"] += 1
    return out


def _similarity(config: SimilarityBlockConfig, rows: list[Row], ctx: BlockContext) -> list[Row]:
    stage = ctx.stats.stage(config.name)
    out: list[Row] = []
    for row in rows:
        a, b = str(row.get(config.a, "")), str(row.get(config.b, ""))
        score = rouge_l(tokens(a), tokens(b)) if config.metric == "rouge_l" else token_f1(a, b)
        if score < config.min:
            stage.dropped[f"{config.metric}<{config.min:g}"] += 1
        elif score > config.max:
            stage.dropped[f"{config.metric}>{config.max:g}"] += 1
        else:
            out.append({**row, config.output: round(score, 4)} if config.output else row)
    return out


def _dedup(config: DedupBlockConfig, rows: list[Row], ctx: BlockContext) -> list[Row]:
    stage = ctx.stats.stage(config.name)
    seeds_texts = ctx.seed_texts.get(config.column, []) if config.against_seeds else []
    index = near_duplicate_index(
        config.threshold,
        config.method or ctx.dedup,
        expected_texts=len(seeds_texts) + len(rows),
        seed=stable_int(f"{ctx.seed}/{ctx.leaf}/{config.name}", bits=32),
    )
    for text in seeds_texts:
        index.add(text)
    seeds = len(index)
    out: list[Row] = []
    for row in rows:
        match = index.find(str(row.get(config.column, "")))
        if match is not None:
            stage.dropped["copies_seed" if match < seeds else "near_duplicate"] += 1
            continue
        index.add(str(row.get(config.column, "")))
        out.append(row)
    return out


def _melt(config: MeltBlockConfig, rows: Sequence[Row]) -> list[Row]:
    out: list[Row] = []
    for row in rows:
        for column in config.columns:
            if row.get(column):
                new = {**row, config.output: row[column], config.kind_column: column}
                new[ROW_ID] = child_id(row, config.name, column)
                out.append(new)
    return out
