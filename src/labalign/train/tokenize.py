"""Chat-template tokenization with a loss mask, and an on-disk cache of the result.

Which tokens carry the loss is decided on the rendered text: each trained turn (assistant, and user when
`unmask` is set; never system) is a character span, from the end of its role header to the end of its
end-of-turn marker, found by rendering the conversation one turn at a time. That works with any
incremental template (labalign's default, Gemma's, Llama's, ChatML) without `{% generation %}` markers;
a template that re-renders earlier turns falls back to those markers. A pretraining record (plain text)
is trained on every token.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from labalign.errors import LabalignError
from labalign.fileio import atomic_path
from labalign.settings.train import LongSamples
from labalign.train.data import Sample, file_digest, read_samples

CACHE_VERSION = "2"  # bump when the tokenized format or the masking rules change
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass
class TokenStats:
    """What happened to a file's samples; long samples are always counted, dropped or not."""

    samples: int = 0
    kept: int = 0
    truncated: int = 0
    dropped_long: int = 0
    dropped_unsupervised: int = 0
    tokens: int = 0
    supervised_tokens: int = 0


@dataclass
class Anchors:
    """The base model's next-token distribution at each token of a TokenizedData (labalign.train.anchor):
    its top-k tokens and their log-probabilities, and which positions the KL anchor applies to."""

    ids: npt.NDArray[np.int32]  # (T, k)
    logp: npt.NDArray[np.float32]  # (T, k)
    active: BoolArray  # (T,) position t's distribution of token t+1 is anchored

    @property
    def k(self) -> int:
        return int(self.ids.shape[1])

    def take(self, index: IntArray) -> Anchors:
        return Anchors(self.ids[index], self.logp[index], self.active[index])

    @staticmethod
    def empty(tokens: int, k: int) -> Anchors:
        return Anchors(
            np.zeros((tokens, k), np.int32), np.zeros((tokens, k), np.float32), np.zeros(tokens, np.bool_)
        )


@dataclass
class TokenizedData:
    """Samples as one flat token array plus offsets (cheap to cache, slice and pack)."""

    input_ids: IntArray
    supervised: BoolArray  # token i is trained (its prediction from token i-1 carries loss)
    offsets: IntArray  # sample i is [offsets[i], offsets[i+1])
    ids: list[str]
    keys: list[str]  # content hashes, for the held-out split
    stats: TokenStats = field(default_factory=TokenStats)
    anchors: Anchors | None = None  # the KL anchor's targets (general replay), per token

    def __len__(self) -> int:
        return len(self.ids)

    def lengths(self) -> IntArray:
        return np.diff(self.offsets)

    def sample(self, i: int) -> tuple[IntArray, BoolArray]:
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.input_ids[lo:hi], self.supervised[lo:hi]

    def target_counts(self) -> IntArray:
        """Supervised targets per sample: trained tokens after the first (nothing predicts token 0)."""
        counts = np.add.reduceat(self.supervised.astype(np.int64), self.offsets[:-1])
        first = self.supervised[self.offsets[:-1]].astype(np.int64)
        return counts - first

    def anchor_counts(self) -> IntArray:
        """Positions per sample whose next-token distribution is anchored to the base's (KL)."""
        if self.anchors is None or not len(self):
            return np.zeros(len(self), np.int64)
        return np.add.reduceat(self.anchors.active.astype(np.int64), self.offsets[:-1])

    def loss_counts(self) -> IntArray:
        """Loss-bearing positions per sample: cross-entropy targets plus anchored positions."""
        return self.target_counts() + self.anchor_counts()

    def subset(self, indices: Sequence[int]) -> TokenizedData:
        spans = [(int(self.offsets[i]), int(self.offsets[i + 1])) for i in indices]
        index = np.concatenate([np.arange(lo, hi) for lo, hi in spans]) if spans else np.zeros(0, np.int64)
        lengths = np.array([hi - lo for lo, hi in spans], dtype=np.int64)
        return TokenizedData(
            input_ids=self.input_ids[index],
            supervised=self.supervised[index],
            offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            ids=[self.ids[i] for i in indices],
            keys=[self.keys[i] for i in indices],
            anchors=self.anchors.take(index) if self.anchors is not None else None,
        )

    @staticmethod
    def concat(parts: Sequence[TokenizedData]) -> TokenizedData:
        all_indices = [(p, i) for p in parts for i in range(len(p))]
        ks = {p.anchors.k for p in parts if p.anchors is not None}
        anchors = None
        if ks:
            k = ks.pop()
            if ks:
                raise ValueError("parts anchored with different top-k")
            pieces = [
                p.anchors if p.anchors is not None else Anchors.empty(len(p.input_ids), k) for p in parts
            ]
            anchors = Anchors(
                np.concatenate([a.ids for a in pieces]),
                np.concatenate([a.logp for a in pieces]),
                np.concatenate([a.active for a in pieces]),
            )
        merged = TokenizedData(
            input_ids=np.concatenate([p.input_ids for p in parts]),
            supervised=np.concatenate([p.supervised for p in parts]),
            offsets=np.concatenate([[0], np.cumsum(np.concatenate([p.lengths() for p in parts]))]).astype(
                np.int64
            ),
            ids=[p.ids[i] for p, i in all_indices],
            keys=[p.keys[i] for p, i in all_indices],
            anchors=anchors,
        )
        return merged


class _NotIncremental(Exception):
    """The template does not render a conversation as the concatenation of its turns."""


def _render(tokenizer: Any, chat: list[dict[str, str]], *, generation_prompt: bool = False) -> str:
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=generation_prompt)
    if not isinstance(text, str):  # pragma: no cover - transformers contract
        raise TypeError("apply_chat_template(tokenize=False) did not return a string")
    return text


def trained_spans(tokenizer: Any, sample: Sample) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans that carry the loss."""
    chat = sample.as_chat()
    full = _render(tokenizer, chat)
    spans: list[tuple[int, int]] = []
    previous = ""
    for i, (role, content) in enumerate(sample.messages):
        upto = full if i == len(chat) - 1 else _render(tokenizer, chat[: i + 1])
        if not upto.startswith(previous) or not full.startswith(upto):
            raise _NotIncremental
        if role == "assistant" or (role == "user" and sample.unmask):
            # The end-of-turn marker is trained (so the model learns to stop); trailing newlines are not.
            end = len(upto.rstrip())
            start: int | None = None
            if role == "assistant" and i > 0:
                header = _render(tokenizer, chat[:i], generation_prompt=True)
                if upto.startswith(header) and len(previous) <= len(header) <= end:
                    start = len(header)
            if start is None:
                needle = content.strip()
                found = upto.find(needle, len(previous)) if needle else -1
                if needle and found < 0:
                    raise _NotIncremental
                start = found if needle else end
            if start < end:
                spans.append((start, end))
        previous = upto
    return full, spans


def _mask_from_offsets(offsets: npt.NDArray[np.int64], spans: list[tuple[int, int]]) -> BoolArray:
    mask = np.zeros(len(offsets), dtype=np.bool_)
    for lo, hi in spans:
        # A token overlapping a span is trained: byte-level merges may glue a header newline to content.
        mask |= (offsets[:, 0] < hi) & (offsets[:, 1] > lo)
    return mask


def _pretraining_tokens(tokenizer: Any, text: str) -> tuple[list[int], list[int]]:
    """Plain text as the model read it in pre-training (BOS, text, EOS), every token trained. The
    forgetting check scores general text the same way (labalign.evaluate.forgetting)."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    return ids, [1] * len(ids)


def _generation_mask(tokenizer: Any, sample: Sample) -> tuple[list[int], list[int]]:
    out = tokenizer.apply_chat_template(
        sample.as_chat(), tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    return list(out["input_ids"]), list(out["assistant_masks"])


def tokenize_samples(
    samples: Sequence[Sample], tokenizer: Any, *, max_seq_len: int, long_samples: LongSamples
) -> TokenizedData:
    """Tokenize with the tokenizer's chat template; drop or truncate long samples (and count them)."""
    if not getattr(tokenizer, "is_fast", False):
        raise LabalignError(
            "the student's tokenizer is not a fast (Rust) tokenizer",
            hint="convert it with transformers (tokenizer.json) so token offsets are available",
        )
    texts: list[str] = []
    spans: list[list[tuple[int, int]]] = []
    direct: dict[int, tuple[list[int], list[int]]] = {}  # ids and mask made without spans
    template = str(getattr(tokenizer, "chat_template", "") or "")
    for index, sample in enumerate(samples):
        if sample.is_pretraining:
            direct[index] = _pretraining_tokens(tokenizer, sample.messages[0][1])
            texts.append("")
            spans.append([])
            continue
        try:
            text, sample_spans = trained_spans(tokenizer, sample)
        except _NotIncremental:
            if "generation" not in template:
                raise LabalignError(
                    "the chat template re-renders earlier turns, so trained tokens cannot be located",
                    path=sample.path,
                    line=sample.line,
                    hint="add {% generation %} markers around assistant text in the template",
                ) from None
            direct[index] = _generation_mask(tokenizer, sample)
            text, sample_spans = "", []
        except Exception as exc:  # jinja errors raised by the template itself (e.g. role order)
            raise LabalignError(
                f"the chat template cannot render this conversation: {exc}",
                path=sample.path,
                line=sample.line,
            ) from exc
        texts.append(text)
        spans.append(sample_spans)
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)

    stats = TokenStats(samples=len(samples))
    ids_out: list[IntArray] = []
    masks_out: list[BoolArray] = []
    kept: list[int] = []
    for index in range(len(samples)):
        if index in direct:
            ids = np.asarray(direct[index][0], dtype=np.int64)
            mask = np.asarray(direct[index][1], dtype=np.bool_)
        else:
            ids = np.asarray(encoded["input_ids"][index], dtype=np.int64)
            offsets = np.asarray(encoded["offset_mapping"][index], dtype=np.int64).reshape(-1, 2)
            mask = _mask_from_offsets(offsets, spans[index])
        if len(ids) > max_seq_len:
            if long_samples == "drop":
                stats.dropped_long += 1
                continue
            stats.truncated += 1
            ids, mask = ids[:max_seq_len], mask[:max_seq_len]
        if not mask[1:].any():
            stats.dropped_unsupervised += 1
            continue
        ids_out.append(ids)
        masks_out.append(mask)
        kept.append(index)
    stats.kept = len(kept)
    stats.tokens = int(sum(len(x) for x in ids_out))
    stats.supervised_tokens = int(sum(int(m[1:].sum()) for m in masks_out))
    lengths = np.array([len(x) for x in ids_out], dtype=np.int64)
    return TokenizedData(
        input_ids=np.concatenate(ids_out) if ids_out else np.zeros(0, np.int64),
        supervised=np.concatenate(masks_out) if masks_out else np.zeros(0, np.bool_),
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        ids=[samples[i].id for i in kept],
        keys=[samples[i].key for i in kept],
        stats=stats,
    )


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Hash of everything about the tokenizer that changes token ids or masks."""
    digest = hashlib.sha256()
    digest.update(tokenizer.backend_tokenizer.to_str().encode())
    digest.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    digest.update(str(getattr(tokenizer, "chat_template", "") or "").encode())
    return digest.hexdigest()


def cache_key(path: Path, tokenizer: Any, *, max_seq_len: int, long_samples: LongSamples) -> str:
    parts = [
        CACHE_VERSION,
        file_digest(path),
        tokenizer_fingerprint(tokenizer),
        str(max_seq_len),
        long_samples,
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def load_tokenized(
    path: Path,
    tokenizer: Any,
    *,
    max_seq_len: int,
    long_samples: LongSamples,
    cache_dir: Path | None,
    flag: str = "the data file",
) -> TokenizedData:
    """Tokenized samples of a JSONL file, from the cache when data, tokenizer, template and settings match."""
    if not path.is_file():
        raise LabalignError("data file not found", path=path, hint=f"check {flag}")
    cache_file = None
    if cache_dir is not None:
        key = cache_key(path, tokenizer, max_seq_len=max_seq_len, long_samples=long_samples)
        cache_file = cache_dir / "train-tokens" / f"{key}.npz"
        if cache_file.is_file():
            try:
                return _read_cache(cache_file)
            except (OSError, ValueError, KeyError):
                pass  # a damaged cache entry is rebuilt
    data = tokenize_samples(
        read_samples(path, flag=flag), tokenizer, max_seq_len=max_seq_len, long_samples=long_samples
    )
    if not len(data):
        s = data.stats
        raise LabalignError(
            f"no sample left after filtering ({s.dropped_long} longer than max_seq_len={max_seq_len}, "
            f"{s.dropped_unsupervised} without trained tokens)",
            path=path,
            hint="raise --max-seq-len or use --long-samples truncate",
        )
    if cache_file is not None:
        _write_cache(cache_file, data)
    return data


def _write_cache(cache_file: Path, data: TokenizedData) -> None:
    # Atomic: a concurrent reader sees the old file or the whole new one.
    with atomic_path(cache_file, suffix=".npz") as tmp:
        np.savez(
            tmp,
            input_ids=data.input_ids.astype(np.int32),
            supervised=data.supervised,
            offsets=data.offsets,
            meta=np.array(json.dumps({"ids": data.ids, "keys": data.keys, "stats": asdict(data.stats)})),
        )


def _read_cache(cache_file: Path) -> TokenizedData:
    with np.load(cache_file, allow_pickle=False) as npz:
        meta = json.loads(str(npz["meta"]))
        return TokenizedData(
            input_ids=npz["input_ids"].astype(np.int64),
            supervised=npz["supervised"].astype(np.bool_),
            offsets=npz["offsets"].astype(np.int64),
            ids=list(meta["ids"]),
            keys=list(meta["keys"]),
            stats=TokenStats(**meta["stats"]),
        )
