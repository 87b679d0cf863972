"""The base model's next-token distributions over the general replay text, computed once before training.

The KL anchor (labalign.train.kl) needs the base's distribution at every anchored position. Computing it
once, before the first phase, from the weights training starts from costs one forward pass over the
replay set, and then:
- no second model (or adapter toggling) is needed during training, for LoRA and full tuning alike, on
  one process or many;
- phase 2 is anchored to the original base, not to phase 1's result;
- each epoch re-uses it instead of running the base again.
The same pass gives the base's own loss on each token, against which a checkpoint's general-text
perplexity is measured on the held-out slice (labalign.train.general).

The result is cached on disk by model, tokens and k: a resumed or repeated run reads it back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from labalign.fileio import atomic_path
from labalign.modeling.loss import default_chunk_tokens, head_logits, head_spec
from labalign.train.packing import build_pack, pack_step
from labalign.train.tokenize import Anchors, TokenizedData

CACHE_VERSION = "1"
FloatArray = npt.NDArray[np.float32]
ProgressCallback = Callable[[int, int], None]


@dataclass
class BaseTargets:
    """Per token of a replay set: the base's top-k next tokens and log-probabilities, and the base's
    loss (nats) on the token that actually follows (0 on each sample's last token)."""

    ids: npt.NDArray[np.int32]
    logp: FloatArray
    nll: FloatArray

    def anchors(self, data: TokenizedData) -> Anchors:
        """Anchored positions: every position whose next token is trained (all of a pretraining text)."""
        active = np.zeros(len(data.input_ids), np.bool_)
        active[:-1] = data.supervised[1:]
        ends = data.offsets[1:] - 1  # a sample's last token predicts nothing of its own
        active[ends[ends >= 0]] = False
        return Anchors(self.ids, self.logp, active)


def _cache_key(identity: str, data: TokenizedData, k: int, dtype: torch.dtype) -> str:
    digest = hashlib.sha256()
    for part in (CACHE_VERSION, identity, str(k), str(dtype)):
        digest.update(part.encode() + b"\0")
    digest.update(np.ascontiguousarray(data.input_ids, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(data.offsets, dtype=np.int64).tobytes())
    return digest.hexdigest()[:32]


def _read(path: Path) -> BaseTargets | None:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return BaseTargets(npz["ids"], npz["logp"], npz["nll"])
    except (OSError, ValueError, KeyError):
        return None  # missing or damaged: recomputed


def _write(path: Path, targets: BaseTargets) -> None:
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, ids=targets.ids, logp=targets.logp, nll=targets.nll)


@torch.no_grad()
def compute_base_targets(
    model: Any,
    data: TokenizedData,
    *,
    k: int,
    max_batch_tokens: int,
    bf16: bool,
    pad_to: int = 1,
    on_progress: ProgressCallback | None = None,
) -> BaseTargets:
    """Run `model` (the base causal LM, in eval mode) over every sample of `data`, packed."""
    device = next(model.parameters()).device
    n_tokens = len(data.input_ids)
    ids = np.zeros((n_tokens, k), np.int32)
    logp = np.zeros((n_tokens, k), np.float32)
    nll = np.zeros(n_tokens, np.float32)
    spec = head_spec(model)
    compute_dtype = torch.bfloat16 if bf16 else spec.weight.dtype
    weight = spec.weight.to(compute_dtype)
    chunk = default_chunk_tokens(weight.shape[0])
    batches = pack_step(range(len(data)), data.lengths(), max_batch_tokens)[0]
    decoder = model.get_decoder()
    for done, indices in enumerate(batches, start=1):
        if not indices:
            continue
        batch = build_pack(data, indices, pad_to=pad_to).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            hidden = decoder(
                input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False
            ).last_hidden_state[0, : batch.tokens]
        # Where each packed position lives in `data` (samples are laid end to end in `indices` order).
        where = np.concatenate([np.arange(data.offsets[i], data.offsets[i + 1]) for i in indices])
        nxt = batch.input_ids[0, 1 : batch.tokens + 1]
        with torch.autocast(device.type, enabled=False):
            for start in range(0, batch.tokens, chunk):
                h = hidden[start : start + chunk].to(compute_dtype)
                logits, _ = head_logits(h, weight, spec)
                lsm = torch.log_softmax(logits, dim=-1)
                top = lsm.topk(k, dim=-1)
                rows = where[start : start + chunk]
                ids[rows] = top.indices.to(torch.int32).cpu().numpy()
                logp[rows] = top.values.cpu().numpy()
                follow = nxt[start : start + chunk]
                n = min(len(follow), len(rows))
                nll[rows[:n]] = (-lsm[:n].gather(1, follow[:n, None]).squeeze(1)).cpu().numpy()
        if on_progress is not None:
            on_progress(done, len(batches))
    ends = data.offsets[1:] - 1
    nll[ends[ends >= 0]] = 0.0  # across a sample boundary nothing is predicted
    return BaseTargets(ids, logp, nll)


def base_targets(
    model_path: Path,
    data: TokenizedData,
    *,
    k: int,
    device: torch.device,
    bf16: bool,
    attn_implementation: str,
    max_batch_tokens: int,
    cache_dir: Path | None,
    on_progress: ProgressCallback | None = None,
) -> BaseTargets:
    """The base's targets for `data`, from the cache when the same model, tokens and k were done."""
    from transformers import AutoModelForCausalLM

    from labalign.llm.hf import model_dir_identity

    dtype = torch.bfloat16 if bf16 else torch.float32
    path = None
    if cache_dir is not None:
        key = _cache_key(model_dir_identity(model_path), data, k, dtype)
        path = cache_dir / "train-anchors" / f"{key}.npz"
        cached = _read(path) if path.is_file() else None
        if cached is not None and len(cached.nll) == len(data.input_ids):
            return cached
    model: Any = AutoModelForCausalLM.from_pretrained(
        str(model_path), dtype=dtype, attn_implementation=attn_implementation
    )
    model.to(device).eval()
    targets = compute_base_targets(
        model,
        data,
        k=k,
        max_batch_tokens=max_batch_tokens,
        bf16=bf16,
        pad_to=64 if device.type == "cpu" else 1,
        on_progress=on_progress,
    )
    del model
    if path is not None:
        _write(path, targets)
    return targets
