"""Model specs for evaluations: cached chat backends for answering and judging, and weight directories
for the evaluations that need the model itself (perplexity, lm-eval log-likelihoods)."""

from __future__ import annotations

from pathlib import Path

from labalign.config import Settings
from labalign.errors import LabalignError
from labalign.llm.types import Backend


def open_model(spec: str, settings: Settings, cache_path: Path) -> Backend:
    """A backend for `spec` whose answers are cached in `cache_path`: re-running an evaluation (or
    building the report again) does not regenerate a single answer."""
    from labalign.llm.resolve import open_cached_backend

    return open_cached_backend(spec, cache_path, settings=settings.llm, cache_dir=settings.cache_dir)


def is_url(spec: str) -> bool:
    from labalign.llm.resolve import parse_spec

    return parse_spec(spec).kind == "url"


def weights_dir(spec: str, cache_dir: Path) -> Path:
    """The Hugging Face directory holding the weights of `spec`: 'default' and .gguf files are converted
    once into the cache. LabalignError for a URL, whose weights are out of reach."""
    from labalign.llm.resolve import parse_spec
    from labalign.modeling.models import resolve_model

    parsed = parse_spec(spec)
    if parsed.kind == "url":
        raise LabalignError(
            f"{spec} is a server URL: this evaluation needs the model's weights",
            hint="pass the model directory (or 'default', or a .gguf file) instead",
        )
    if parsed.kind == "gguf":
        from labalign.llm.convert import convert_gguf, converted_dir_for

        gguf = Path(parsed.value)
        out = converted_dir_for(gguf, cache_dir)
        convert_gguf(gguf, out)
        return out
    return resolve_model(parsed.value, cache_dir)
