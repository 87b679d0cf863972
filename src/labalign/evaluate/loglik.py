"""Log-likelihood of continuations given a context, in-process and batched: the scorer behind every
multiple-choice check (general knowledge, MMLU-branch), the way lm-evaluation-harness scores
`loglikelihood` requests."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from labalign.fileio import write_text_atomic
from labalign.progress import ProgressCallback

# Scoring method, part of the cache key: scores from another method differ in the last bits, and base and
# tuned must be scored alike. 2: each context runs once, shared by its continuations through a KV cache.
METHOD = 2


def score_continuations(
    model_dir: Path,
    items: Sequence[tuple[str, Sequence[str]]],
    *,
    batch_size: int = 32,
    on_progress: ProgressCallback | None = None,
    phase: str = "scoring",
    dtype: str = "auto",
) -> tuple[str, list[list[float]]]:
    """(weights identity, log-likelihood in nats of each continuation of each item): for every
    (context, continuations) item, the sum of log p(token) over the continuation's tokens after the
    context. The context is tokenized with the tokenizer's special tokens, each continuation without
    (so a continuation carries its own leading space). `dtype`: see forgetting.scoring_dtype.

    Each context runs through the model once and its continuations (`batch_size` of them at most per
    batch) continue from its KV cache, rather than each (context + continuation) row running whole.
    Scoring the base on the general-knowledge questions (one-word options: the context is most of each
    row) took 11 s instead of 17 on 2 cores in bf16. On the quick run's MMLU-branch items (33 context
    and 4 x 22 continuation tokens) repeated measurements ranged from 20% faster to no different: the
    vocabulary-sized head, which every scored token still needs, dominates there."""
    import torch

    from labalign.evaluate.forgetting import load_scoring_model

    model, tokenizer, spec, identity = load_scoring_model(model_dir, dtype)
    contexts = [list(tokenizer(context, add_special_tokens=True)["input_ids"]) for context, _ in items]
    continuations = [
        [list(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in conts] for _, conts in items
    ]
    loglik = [[0.0] * len(conts) for conts in continuations]
    # Longest first (little padding); a batch takes whole items, up to `batch_size` continuations.
    order = sorted(
        (i for i in range(len(items)) if continuations[i]),
        key=lambda i: (-len(contexts[i]), -max(map(len, continuations[i]))),
    )
    batches: list[list[int]] = []
    filled = 0  # continuations in the last batch
    for i in order:
        if batches and filled + len(continuations[i]) <= batch_size:
            batches[-1].append(i)
            filled += len(continuations[i])
        else:
            batches.append([i])
            filled = len(continuations[i])
    done, total = 0, sum(map(len, continuations))
    with torch.no_grad():
        for batch in batches:
            for i, row in zip(
                batch,
                _score_batch(model, spec, [contexts[i] for i in batch], [continuations[i] for i in batch]),
                strict=True,
            ):
                loglik[i] = row
            done += sum(len(continuations[i]) for i in batch)
            if on_progress is not None:
                on_progress(phase, done, total)
    del model
    return identity, loglik


def _score_batch(
    model: Any, spec: Any, contexts: list[list[int]], continuations: list[list[list[int]]]
) -> list[list[float]]:
    """Log-likelihood of each continuation of each context: the contexts as one left-padded batch whose
    KV cache is then repeated once per continuation, the continuations as a right-padded second batch
    after it (padding masked in both)."""
    import torch
    from transformers import DynamicCache

    from labalign.llm.hf_decode import cache_keyword
    from labalign.modeling.loss import head_logits

    device = spec.weight.device
    decoder = model.get_decoder()
    cache_arg = cache_keyword(decoder)
    width = max(map(len, contexts))
    ctx_ids = torch.zeros((len(contexts), width), dtype=torch.long)
    ctx_mask = torch.zeros_like(ctx_ids)
    for b, ids in enumerate(contexts):  # left-padded: a sliding-window layer keeps the last tokens
        ctx_ids[b, width - len(ids) :] = torch.tensor(ids)
        ctx_mask[b, width - len(ids) :] = 1
    cache = DynamicCache(config=model.config)
    first = decoder(
        input_ids=ctx_ids.to(device),
        attention_mask=ctx_mask.to(device),
        position_ids=(ctx_mask.cumsum(-1) - 1).clamp(min=0).to(device),
        use_cache=True,
        **{cache_arg: cache},
    ).last_hidden_state[:, -1]  # each context's last position predicts its continuations' first token
    rows = [(b, c) for b, conts in enumerate(continuations) for c in range(len(conts))]
    row_context = [b for b, _ in rows]
    cache.batch_select_indices(torch.tensor(row_context, device=device))
    longest = max(len(continuations[b][c]) for b, c in rows)
    cont_ids = torch.zeros((len(rows), longest), dtype=torch.long)
    cont_mask = torch.zeros_like(cont_ids)
    for r, (b, c) in enumerate(rows):
        ids = continuations[b][c]
        cont_ids[r, : len(ids)] = torch.tensor(ids)
        cont_mask[r, : len(ids)] = 1
    starts = torch.tensor([len(contexts[b]) for b in row_context])
    second = None
    if longest > 1:  # the last token of a continuation predicts nothing scored: run all but it
        second = decoder(
            input_ids=cont_ids[:, :-1].to(device),
            attention_mask=torch.cat([ctx_mask[row_context], cont_mask[:, :-1]], 1).to(device),
            position_ids=(starts[:, None] + torch.arange(longest - 1)[None, :]).to(device),
            use_cache=True,
            **{cache_arg: cache},
        ).last_hidden_state
    # The hidden state that predicts each scored token: a continuation's first token is predicted at its
    # context's last position, each later one at the continuation's previous position. All of the
    # batch's go through the head in one matmul (a few tokens per option).
    states, follow, owner = [], [], []
    for r, (b, c) in enumerate(rows):
        ids = continuations[b][c]
        if not ids:
            continue  # an empty continuation: log-likelihood 0
        states.append(first[b][None])
        if len(ids) > 1:
            assert second is not None
            states.append(second[r, : len(ids) - 1])
        follow += ids
        owner += [r] * len(ids)
    out: list[list[float]] = [[0.0] * len(conts) for conts in continuations]
    if not states:
        return out
    logits, _ = head_logits(torch.cat(states), spec.weight, spec)
    token_ll = torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(follow, device=device)[:, None])
    sums = torch.zeros(len(rows), dtype=torch.float64, device=device)
    sums.index_add_(0, torch.tensor(owner, device=device), token_ll.squeeze(1).double())
    for r, (b, c) in enumerate(rows):
        out[b][c] = float(sums[r])
    return out


def score_continuations_cached(
    model_dir: Path,
    items: Sequence[tuple[str, Sequence[str]]],
    cache_dir: Path | None,
    *,
    batch_size: int = 32,
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
        {"model": model_dir_identity(model_dir), "items": items, "method": METHOD} | dtype_key(dtype),
        sort_keys=True,
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
