"""Counting tokens: a real tokenizer when one is given, else a conservative estimate."""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from labalign.errors import DocumentError

TokenCounter = Callable[[str], int]

_UNITS = re.compile(r"[A-Za-z]+|[0-9]| (?=[0-9])|\n|[ \t]{2,}|[^\x00-\x7f]|[^\sA-Za-z0-9]")


def estimate_tokens(text: str) -> int:
    """Estimate the token count of `text` for a SentencePiece/BPE vocabulary, erring high.

    The rules, chosen to count at or above what SentencePiece/BPE vocabularies usually produce:

    - a run of ASCII letters: 1 token per 4 letters, rounded up (common words are one token, but
      rare words and names split into pieces of 2 to 4 letters);
    - each digit: 1 token, and 1 more for a space before a digit (Gemma and Llama 2 split numbers
      into digits, leaving the space a token of its own);
    - each punctuation or symbol character: 1 token;
    - each non-ASCII character: 2 tokens (CJK, accents, emoji often take one to three byte tokens);
    - each newline: 1 token; a run of 2+ spaces or tabs: 1 token per 4, rounded up; other single
      spaces are free (they merge into the next word).

    On prose, markdown and code this comes out above real counts; text made of random identifiers,
    hashes or numbers can come close to them or exceed. Pass a tokenizer for exact counts.
    """
    total = 0
    for match in _UNITS.finditer(text):
        unit = match.group()
        first = unit[0]
        if first.isascii() and first.isalpha():
            total += math.ceil(len(unit) / 4)
        elif first in " \t":
            total += math.ceil(len(unit) / 4)  # also a lone space before a digit: 1
        elif not first.isascii():
            total += 2
        else:
            total += 1
    return total


def token_counter(tokenizer: str | Path | None) -> TokenCounter:
    """A function counting tokens (without special tokens) of a text.

    `tokenizer` is None for `estimate_tokens`, else the path of a ``tokenizer.json`` or of a Hugging
    Face model folder. ``tokenizer.json`` is loaded with the `tokenizers` library when installed; a
    folder without one (or without `tokenizers`) is loaded with transformers' ``AutoTokenizer``,
    from disk only.
    """
    if tokenizer is None:
        return estimate_tokens
    path = Path(tokenizer).expanduser()
    if not path.exists():
        raise DocumentError(
            f"tokenizer not found: {tokenizer}",
            hint="pass the path of a tokenizer.json file or of a Hugging Face model folder",
        )
    json_file = path if path.is_file() else path / "tokenizer.json"
    tokenizers = _optional("tokenizers")
    if json_file.is_file() and tokenizers is not None:
        try:
            tok = tokenizers.Tokenizer.from_file(str(json_file))
        except Exception as exc:  # the Rust binding raises plain Exception for a bad file
            raise DocumentError(
                f"cannot load tokenizer {json_file}: {exc}",
                hint="pass a tokenizer.json written by the `tokenizers` library",
            ) from None

        def count_fast(text: str) -> int:
            return len(tok.encode(text, add_special_tokens=False).ids)

        return count_fast
    transformers = _optional("transformers")
    if transformers is not None:
        try:
            if path.is_dir():
                hf = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            else:
                hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
        except Exception as exc:  # transformers raises OSError, ValueError, ... for unusable folders
            raise DocumentError(
                f"cannot load tokenizer from {path}: {exc}",
                hint="pass a tokenizer.json file or a model folder with tokenizer files",
            ) from None

        def count_hf(text: str) -> int:
            return len(hf.encode(text, add_special_tokens=False))

        return count_hf
    if path.is_dir() and not json_file.is_file():
        raise DocumentError(
            f"{path} has no tokenizer.json, and reading other tokenizer files needs transformers",
            hint="pip install transformers, or pass a tokenizer.json",
        )
    raise DocumentError(
        "counting tokens with a tokenizer needs the `tokenizers` package",
        hint="pip install tokenizers (or transformers), or leave out --tokenizer to use the estimate",
    )


def _optional(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None
