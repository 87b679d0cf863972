"""A Hugging Face tokenizer as GGUF tokenizer metadata, the two kinds llama.cpp runs.

- SentencePiece-style BPE (Gemma, Llama 2, Mistral: `▁` for spaces, byte fallback) -> llama.cpp's
  "llama" tokenizer, which merges by score: a token made by merge number r gets score -r, so llama.cpp
  merges in the order the Hugging Face merges list does.
- Byte-level BPE (GPT-2 style: Llama 3, Qwen, Granite) -> "gpt2", with the merges as they are and the
  pre-tokenizer named when its split pattern is one llama.cpp knows.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labalign.errors import LabalignError

# llama.cpp's token types (llama_token_type / gguf.TokenType).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE = 1, 2, 3, 4, 6
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")
# Split patterns of byte-level pre-tokenizers and llama.cpp's name for each (tokenizer.ggml.pre); any
# other pattern is written as "default" (GPT-2's split), which can differ on digits and punctuation.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
KNOWN_SPLITS = {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}


@dataclass
class GgufVocab:
    model: str  # "llama" or "gpt2"
    tokens: list[str]
    token_types: list[int]
    scores: list[float] | None = None
    merges: list[str] | None = None
    pre: str = "default"
    add_space_prefix: bool = False
    special_ids: dict[str, int] = field(default_factory=dict)  # bos, eos, unk, pad
    add_bos: bool = False
    notes: list[str] = field(default_factory=list)  # what a user should know about the conversion


def read_vocab(model_dir: Path, config: dict[str, Any]) -> GgufVocab:
    """The tokenizer in `model_dir` (tokenizer.json, tokenizer_config.json) as GGUF metadata."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise LabalignError(
            "no tokenizer.json in the model folder", path=model_dir, hint="save the tokenizer with the model"
        )
    data = json.loads(path.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise LabalignError(
            f"tokenizer type {model.get('type')!r} cannot be exported to GGUF yet (BPE only)", path=path
        )
    vocab: dict[str, int] = model["vocab"]
    added = {int(t["id"]): t for t in data.get("added_tokens", [])}
    size = max([*vocab.values(), *added.keys()]) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]  # ids with no token (llama.cpp needs every id named)
    for text, i in vocab.items():
        tokens[i] = text
    unnamed = set(range(size)).difference(vocab.values(), added)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    spm = bool(model.get("byte_fallback")) or "▁" in json.dumps(data.get("normalizer"))
    unk = model.get("unk_token")
    types = []
    for i, text in enumerate(tokens):
        if i in added:
            tokens[i] = added[i]["content"]
            types.append(CONTROL if added[i].get("special") else USER_DEFINED)
        elif text == unk:
            types.append(UNKNOWN)
        elif spm and _BYTE_TOKEN.fullmatch(text):
            types.append(BYTE)
        elif i in unnamed:
            types.append(USER_DEFINED)
        else:
            types.append(NORMAL)
    vocab_out = GgufVocab(model="llama" if spm else "gpt2", tokens=tokens, token_types=types)
    if spm:
        rank: dict[str, int] = {}
        for r, merge in enumerate(merges):
            left, _, right = merge.partition(" ")
            rank.setdefault(left + right, r)
        vocab_out.scores = [
            -float(rank[t]) if t in rank else (0.0 if k == BYTE else -1e9 if k == NORMAL else -1000.0)
            for t, k in zip(tokens, types, strict=True)
        ]
        vocab_out.add_space_prefix = "Prepend" in json.dumps(
            data.get("normalizer")
        ) or "Prepend" in json.dumps(data.get("pre_tokenizer"))
    else:
        vocab_out.merges = merges
        vocab_out.pre = _pre_name(data.get("pre_tokenizer"))
        if vocab_out.pre == "default":
            vocab_out.notes.append(
                "the tokenizer's split pattern is not one llama.cpp names; written as GPT-2's ('default'), "
                "which can split digits and punctuation differently"
            )
    vocab_out.special_ids, vocab_out.add_bos = _specials(model_dir, config, tokens)
    return vocab_out


def _pre_name(pre: Any) -> str:
    for pattern in re.findall(r'"Regex": "((?:[^"\\]|\\.)*)"', json.dumps(pre)):
        name = KNOWN_SPLITS.get(json.loads(f'"{pattern}"'))
        if name:
            return name
    return "default"


def _specials(model_dir: Path, config: dict[str, Any], tokens: list[str]) -> tuple[dict[str, int], bool]:
    """bos/eos/unk/pad ids (tokenizer_config's names first, then config.json) and whether BOS is added."""
    tc_path = model_dir / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text(encoding="utf-8")) if tc_path.is_file() else {}
    index = {t: i for i, t in enumerate(tokens)}
    ids: dict[str, int] = {}
    for key in ("bos", "eos", "unk", "pad"):
        name = tc.get(f"{key}_token")
        name = name.get("content") if isinstance(name, dict) else name
        if isinstance(name, str) and name in index:
            ids[key] = index[name]
        elif isinstance(config.get(f"{key}_token_id"), int):
            ids[key] = int(config[f"{key}_token_id"])
        elif isinstance(config.get(f"{key}_token_id"), list) and config[f"{key}_token_id"]:
            ids[key] = int(config[f"{key}_token_id"][0])
    add_bos = tc.get("add_bos_token")
    if not isinstance(add_bos, bool):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        first = tokenizer("a")["input_ids"][:1]
        add_bos = "bos" in ids and first == [ids["bos"]]
    return ids, add_bos
