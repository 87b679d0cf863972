"""Model directories and tokenizers, as training and evaluation both open them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from labalign.errors import LabalignError
from labalign.llm.chat_template import ensure_chat_template


def resolve_model(model: str, cache_dir: Path) -> Path:
    """A model directory; 'default' converts the embedded Gemma 3 270M GGUF once and reuses it."""
    if model == "default":
        from labalign.llm.default_model import default_hf_dir  # heavy (gguf, transformers): lazy

        return Path(default_hf_dir(cache_dir))
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise LabalignError(
            "not a Hugging Face model directory (no config.json)",
            path=path,
            hint="pass a directory saved with save_pretrained, or --model default",
        )
    return path


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise LabalignError(
            f"cannot load the tokenizer: {exc}", path=path, hint="pass a Hugging Face model directory"
        ) from exc
    ensure_chat_template(tokenizer)  # a base model trains with the template the LLM layer prompts with
    return tokenizer
