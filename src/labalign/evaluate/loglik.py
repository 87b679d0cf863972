"""Log-likelihood of continuations given a context, in-process and batched: the scorer behind every
multiple-choice check (general knowledge, MMLU-branch), the way lm-evaluation-harness scores
`loglikelihood` requests."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from labalign.fileio import write_text_atomic
from labalign.progress import ProgressCallback


def score_continuations(
    model_dir: Path,
    items: Sequence[tuple[str, Sequence[str]]],
    *,
    batch_size: int = 16,
    on_progress: ProgressCallback | None = None,
    phase: str = "scoring",
    dtype: str = "auto",
) -> tuple[str, list[list[float]]]:
    """(weights identity, log-likelihood in nats of each continuation of each item): for every
    (context, continuations) item, the sum of log p(token) over the continuation's tokens after the
    context. The context is tokenized with the tokenizer's special tokens, each continuation without
    (so a continuation carries its own leading space). `dtype`: see forgetting.scoring_dtype."""
    import torch

    from labalign.evaluate.forgetting import load_scoring_model, right_padded_hidden
    from labalign.modeling.loss import head_logits

    model, tokenizer, spec, identity = load_scoring_model(model_dir, dtype)
    device = spec.weight.device
    rows: list[tuple[int, int, list[int], int]] = []  # (item, continuation, ids, where it starts)
    for qi, (context, continuations) in enumerate(items):
        ctx = list(tokenizer(context, add_special_tokens=True)["input_ids"])
        for ci, continuation in enumerate(continuations):
            cont = list(tokenizer(continuation, add_special_tokens=False)["input_ids"])
            rows.append((qi, ci, ctx + cont, len(ctx)))
    loglik = [[0.0] * len(continuations) for _, continuations in items]
    order = sorted(range(len(rows)), key=lambda r: -len(rows[r][2]))  # longest first: little padding
    decoder = model.get_decoder()
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = [rows[r] for r in order[start : start + batch_size]]
            _, hidden = right_padded_hidden(decoder, [seq for _, _, seq, _ in batch], device)
            # Only the positions that predict a continuation's tokens go through the head, all of the
            # batch's in one matmul (a few tokens per option: a chunk per option would pad each to 64 rows).
            where = [
                (j, p) for j, (_, _, seq, begin) in enumerate(batch) for p in range(begin - 1, len(seq) - 1)
            ]
            index = torch.tensor(where, dtype=torch.long, device=device)
            logits, _ = head_logits(hidden[index[:, 0], index[:, 1]], spec.weight, spec)
            follow = torch.tensor([batch[j][2][p + 1] for j, p in where], device=device)
            token_ll = torch.log_softmax(logits.float(), -1).gather(1, follow[:, None]).squeeze(1)
            sums = torch.zeros(len(batch), dtype=torch.float64, device=device)
            sums.index_add_(0, index[:, 0], token_ll.double())
            for j, (qi, ci, _, _) in enumerate(batch):
                loglik[qi][ci] = float(sums[j])
            if on_progress is not None:
                on_progress(phase, min(start + batch_size, len(order)), len(order))
    del model
    return identity, loglik


def score_continuations_cached(
    model_dir: Path,
    items: Sequence[tuple[str, Sequence[str]]],
    cache_dir: Path | None,
    *,
    batch_size: int = 16,
    on_progress: ProgressCallback | None = None,
    phase: str = "scoring",
    dtype: str = "auto",
) -> tuple[str, list[list[float]]]:
    """`score_continuations`, remembered per (weights, items, dtype) in `cache_dir`: the base model's
    scores are computed once per machine, as its perplexity and general knowledge are."""
    from labalign.evaluate.forgetting import dtype_key, scoring_dtype
    from labalign.llm.hf import model_dir_identity

    dtype = scoring_dtype(dtype)
    key = json.dumps(
        {"model": model_dir_identity(model_dir), "items": items} | dtype_key(dtype), sort_keys=True
    )
    path = cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json" if cache_dir else None
    if path is not None and path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        if on_progress is not None:
            on_progress(f"{phase} (cached)", 1, 1)
        return data["identity"], data["loglik"]
    identity, loglik = score_continuations(
        model_dir, items, batch_size=batch_size, on_progress=on_progress, phase=phase, dtype=dtype
    )
    if path is not None:
        write_text_atomic(path, json.dumps({"identity": identity, "loglik": loglik}))
    return identity, loglik


def pick_per_byte(loglik: Sequence[float], continuations: Sequence[str]) -> int:
    """The continuation with the highest log-likelihood per UTF-8 byte (lm-eval's acc_norm: longer
    options are not penalised for their length)."""
    norm = [ll / max(1, len(c.encode())) for ll, c in zip(loglik, continuations, strict=True)]
    return max(range(len(norm)), key=norm.__getitem__)
