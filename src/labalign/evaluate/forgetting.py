"""Forgetting check: perplexity of the base and the tuned model on general text that neither was tuned on.

Tuning on a narrow taxonomy can erode what the base model knew about ordinary language. The shipped
set (`data/general_text.jsonl`, original text written for labalign) covers encyclopedia, news, how-to,
dialogue and narrative styles. Perplexity is exp(total token NLL / total predicted tokens) over the
whole set; both models must tokenize it identically, or the per-token numbers are not comparable.

The tuned model is flagged when its perplexity exceeds the base's by more than `DEFAULT_THRESHOLD`
(10%, i.e. +0.095 nats per token). Identical weights give a ratio of exactly 1; LAB tuning with phase-1
replay usually moves general-text perplexity by a few percent, so a rise beyond 10% means general
language modelling clearly degraded rather than drifted.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from labalign.errors import LabalignError
from labalign.evaluate.results import (
    ForgettingDataset,
    ForgettingDocument,
    ForgettingResult,
    Models,
    Perplexities,
    StylePerplexity,
)
from labalign.evaluate.stats import paired_delta
from labalign.fileio import write_text_atomic
from labalign.jsonl import iter_jsonl
from labalign.progress import ProgressCallback

DEFAULT_THRESHOLD = 0.10
DEFAULT_WINDOW = 1024  # tokens per forward pass: enough for every shipped document at once


@dataclass(frozen=True)
class Document:
    id: str
    style: str
    title: str
    text: str


def default_text_path() -> Path:
    return Path(str(resources.files("labalign.evaluate") / "data" / "general_text.jsonl"))


def load_documents(path: Path | None = None) -> list[Document]:
    """The general-text set: `path` (JSON Lines with at least "text"), or the one labalign ships."""
    source = path or default_text_path()
    docs = []
    for line, record in iter_jsonl(source, hint='each line is {"id": ..., "text": ...}'):
        if (
            not isinstance(record, dict)
            or not isinstance(record.get("text"), str)
            or not record["text"].strip()
        ):
            raise LabalignError("a general-text record needs a non-empty 'text'", path=source, line=line)
        docs.append(
            Document(
                str(record.get("id", f"line-{line}")),
                str(record.get("style", "")),
                str(record.get("title", "")),
                record["text"],
            )
        )
    if not docs:
        raise LabalignError("the general-text set is empty", path=source)
    return docs


@dataclass
class Perplexity:
    """One model's summed token NLL (nats) and predicted-token count per document; `ids_sha256` is a
    digest of the token ids it read (equal digests: the same tokenization)."""

    identity: str
    nll: list[float]
    tokens: list[int]
    ids_sha256: str

    @property
    def perplexity(self) -> float:
        return math.exp(sum(self.nll) / sum(self.tokens))

    def per_token(self) -> list[float]:
        return [n / t for n, t in zip(self.nll, self.tokens, strict=True)]

    def to_json(self) -> dict[str, Any]:
        return {
            "identity": self.identity,
            "nll": self.nll,
            "tokens": self.tokens,
            "ids_sha256": self.ids_sha256,
        }


def tokenize(tokenizer: Any, docs: Sequence[Document]) -> list[list[int]]:
    """Token ids as the model reads text (with its BOS, when the tokenizer adds one)."""
    return [list(tokenizer(d.text, add_special_tokens=True)["input_ids"]) for d in docs]


def windows(ids: Sequence[int], size: int) -> list[list[int]]:
    """Split a document so that every token but the first is predicted exactly once: each window after
    the first starts with the previous window's last token, its only context across the cut."""
    if size < 2:
        raise ValueError("a window needs at least 2 tokens")
    out = [list(ids[:size])]
    start = size - 1
    while start < len(ids) - 1:
        out.append(list(ids[start : start + size]))
        start += size - 1
    return out


def _check_head(model: Any, spec: Any, device: Any) -> None:
    """Decoder + chunked head must reproduce the model's own logits; a family with a logit transform
    we do not know would otherwise give silently wrong perplexities."""
    import torch

    from labalign.modeling.loss import chunked_cross_entropy_sum

    vocab = spec.weight.shape[0]
    ids = (torch.arange(9, device=device) * 7919 % vocab).unsqueeze(0)
    logits = model(input_ids=ids[:, :-1], use_cache=False).logits.float()
    expected = torch.nn.functional.cross_entropy(logits[0], ids[0, 1:], reduction="sum")
    hidden = model.get_decoder()(input_ids=ids[:, :-1], use_cache=False).last_hidden_state
    ours, _ = chunked_cross_entropy_sum(hidden[0], ids[0, 1:], spec)
    if not torch.allclose(ours.float(), expected, rtol=1e-3, atol=1e-3):
        raise LabalignError(
            f"{type(model).__name__}: its LM head applies a transform labalign does not know",
            hint="report the model family",
        )


SCORING_DTYPES = ("auto", "float32", "bfloat16")


def check_scoring_dtype(requested: str) -> None:
    """LabalignError for a name scoring_dtype does not know (cheap: nothing is imported)."""
    if requested not in SCORING_DTYPES:
        raise LabalignError(
            f"unknown scoring dtype {requested!r}", hint=f"use one of: {', '.join(SCORING_DTYPES)}"
        )


def dtype_key(dtype: str) -> dict[str, str]:
    """The cache-key fields of scores computed in `dtype` (resolved): none for float32, so the scores
    cached before dtypes were recorded (all float32) are still found."""
    return {} if dtype == "float32" else {"dtype": dtype}


def scoring_dtype(requested: str = "auto") -> str:
    """The dtype log-likelihood scoring runs in (perplexity, general knowledge, MMLU-branch).

    auto: bfloat16 where the hardware computes it natively (CUDA, CPUs with AVX512-BF16 or AMX), else
    what local decoding uses (float32 on CPUs). Base and tuned are always scored alike, and the cached
    scores are kept per dtype, so a ratio or delta never mixes the two."""
    from labalign.llm.hf import native_bf16, pick_device, pick_dtype

    check_scoring_dtype(requested)
    if requested != "auto":
        return requested
    device = pick_device(None)
    return "bfloat16" if native_bf16(device) else str(pick_dtype(device, None)).removeprefix("torch.")


def load_scoring_model(model_dir: Path, dtype: str = "auto") -> tuple[Any, Any, Any, str]:
    """(model in eval mode on the scoring device, tokenizer, its checked LM head spec, weights identity)
    for log-likelihood scoring through the chunked head, in `dtype` (see scoring_dtype); shared with
    labalign.evaluate.loglik."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    from labalign.llm.convert import quiet_transformers
    from labalign.llm.hf import model_dir_identity, pick_device, pick_dtype
    from labalign.modeling.loss import head_spec
    from labalign.modeling.models import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    device = pick_device(None)
    try:
        with quiet_transformers(transformers):
            model: Any = AutoModelForCausalLM.from_pretrained(
                str(model_dir), dtype=pick_dtype(device, scoring_dtype(dtype)), local_files_only=True
            )
    except (OSError, ValueError) as exc:
        raise LabalignError(f"cannot load the model: {exc}", path=model_dir) from exc
    model.to(device).eval()
    spec = head_spec(model)
    with torch.no_grad():
        _check_head(model, spec, device)
    return model, tokenizer, spec, model_dir_identity(model_dir)


def right_padded_hidden(decoder: Any, rows: Sequence[Sequence[int]], device: Any) -> tuple[Any, Any]:
    """(input ids on the CPU, final hidden states) of token rows run as one right-padded batch: real
    tokens keep positions 0..n-1, and padded positions are never scored."""
    import torch

    input_ids = torch.zeros((len(rows), max(len(r) for r in rows)), dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = torch.tensor(list(r))
        mask[i, : len(r)] = 1
    out = decoder(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False)
    return input_ids, out.last_hidden_state


def score(
    model_dir: Path,
    docs: Sequence[Document],
    *,
    window: int = DEFAULT_WINDOW,
    batch_size: int = 4,
    on_progress: ProgressCallback | None = None,
    label: str = "model",
    dtype: str = "auto",
) -> Perplexity:
    """Per-document NLL of the model in `model_dir` (in-process, no gradients, batched, in `dtype`)."""
    import torch

    from labalign.modeling.loss import chunked_cross_entropy_sum

    model, tokenizer, spec, identity = load_scoring_model(model_dir, dtype)
    device = spec.weight.device
    ids = tokenize(tokenizer, docs)
    limit = getattr(model.config.get_text_config(), "max_position_embeddings", None) or window
    size = max(2, min(window, int(limit)))
    pieces = [(d, w) for d, doc_ids in enumerate(ids) for w in windows(doc_ids, size) if len(w) > 1]
    # Longest first, so each batch pads little and the slowest batch shows up early in the estimate.
    pieces.sort(key=lambda p: -len(p[1]))
    nll = [0.0] * len(docs)
    counts = [max(0, len(doc_ids) - 1) for doc_ids in ids]
    phase = f"{label}: perplexity"
    with torch.no_grad():
        decoder = model.get_decoder()
        for start in range(0, len(pieces), batch_size):
            batch = pieces[start : start + batch_size]
            input_ids, hidden = right_padded_hidden(decoder, [w for _, w in batch], device)
            for row, (doc, w) in enumerate(batch):
                n = len(w)
                total, _ = chunked_cross_entropy_sum(
                    hidden[row, : n - 1], input_ids[row, 1:n].to(device), spec
                )
                nll[doc] += float(total)
            if on_progress is not None:
                on_progress(phase, min(start + batch_size, len(pieces)), len(pieces))
    del model
    if not any(counts):
        raise LabalignError("the general text is too short to score", hint="give longer documents")
    digest = hashlib.sha256(json.dumps(ids).encode()).hexdigest()
    return Perplexity(identity, nll, counts, digest)


def score_cached(
    model_dir: Path,
    docs: Sequence[Document],
    cache_dir: Path | None,
    *,
    window: int = DEFAULT_WINDOW,
    batch_size: int = 4,
    on_progress: ProgressCallback | None = None,
    label: str = "model",
    dtype: str = "auto",
) -> Perplexity:
    """`score`, remembered per (weights, text, window, dtype) in `cache_dir`: the base model is scored
    once, not on every run."""
    from labalign.llm.hf import model_dir_identity

    dtype = scoring_dtype(dtype)
    key_src = json.dumps(
        {"model": model_dir_identity(model_dir), "docs": [d.text for d in docs], "window": window}
        | dtype_key(dtype),
        sort_keys=True,
    )
    path = None
    if cache_dir is not None:
        path = cache_dir / f"{hashlib.sha256(key_src.encode()).hexdigest()[:32]}.json"
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            if on_progress is not None:
                on_progress(f"{label}: perplexity (cached)", 1, 1)
            return Perplexity(data["identity"], data["nll"], data["tokens"], data["ids_sha256"])
    result = score(
        model_dir,
        docs,
        window=window,
        batch_size=batch_size,
        on_progress=on_progress,
        label=label,
        dtype=dtype,
    )
    if path is not None:
        write_text_atomic(path, json.dumps(result.to_json()))
    return result


def compare(
    docs: Sequence[Document],
    tuned: Perplexity,
    base: Perplexity,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    source: str = "",
) -> ForgettingResult:
    """Both perplexities, their ratio, a per-document paired delta of per-token NLL, and the flag."""
    if tuned.ids_sha256 != base.ids_sha256 or tuned.tokens != base.tokens:
        raise LabalignError(
            "the tuned and base models tokenize the general text differently",
            hint="perplexities are per token, so the forgetting check needs both models to share a tokenizer",
        )
    ratio = tuned.perplexity / base.perplexity
    styles: dict[str, StylePerplexity] = {}
    for style in sorted({d.style for d in docs}):
        index = [i for i, d in enumerate(docs) if d.style == style]
        tokens = sum(tuned.tokens[i] for i in index)
        if tokens:
            styles[style] = StylePerplexity(
                model=math.exp(sum(tuned.nll[i] for i in index) / tokens),
                base=math.exp(sum(base.nll[i] for i in index) / tokens),
            )
    return ForgettingResult(
        dataset=ForgettingDataset(source=source, documents=len(docs), tokens=sum(tuned.tokens)),
        models=Models(model=tuned.identity, base=base.identity),
        model=Perplexities(perplexity=tuned.perplexity, nll_per_token=sum(tuned.nll) / sum(tuned.tokens)),
        base=Perplexities(perplexity=base.perplexity, nll_per_token=sum(base.nll) / sum(base.tokens)),
        ratio=ratio,
        threshold=threshold,
        flagged=ratio > 1 + threshold,
        # Per-document NLL/token, tuned - base: positive means worse; the CI says how consistent.
        delta_nll_per_token=paired_delta(tuned.per_token(), base.per_token(), tie=0.01).result(),
        styles=styles,
        documents=[
            ForgettingDocument(
                id=d.id,
                style=d.style,
                title=d.title,
                tokens=tuned.tokens[i],
                model=math.exp(tuned.nll[i] / tuned.tokens[i]) if tuned.tokens[i] else None,
                base=math.exp(base.nll[i] / base.tokens[i]) if base.tokens[i] else None,
            )
            for i, d in enumerate(docs)
        ],
    )
