"""From a model spec string (settings, `--teacher`, `--model`) to a `Backend`.

Four forms are accepted:

- `default`: the embedded Gemma 3 270M (llama.cpp; transformers on its converted directory)
- a `.gguf` file: llama.cpp (transformers on a cached conversion when preferred)
- a directory with `config.json`: transformers
- an `http(s)://host:port/v1` URL: an OpenAI-compatible server

Model libraries are imported only when a spec needs them, so `labalign --help` stays fast.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from labalign.errors import LabalignError
from labalign.llm.hints import LLAMA_CPP_HINT
from labalign.paths import default_cache_dir

if TYPE_CHECKING:
    from labalign.llm.cache import CachedBackend
    from labalign.llm.types import Backend
    from labalign.settings.llm import LLMSettings

Prefer = Literal["auto", "llamacpp", "transformers"]
SpecKind = Literal["default", "gguf", "hf_dir", "url"]

TRANSFORMERS_HINT = "pip install torch 'transformers>=4.56' gguf sentencepiece"

SPEC_FORMS = (
    "'default' (the embedded Gemma 3 270M), a .gguf file, a Hugging Face model directory "
    "(with config.json), or an OpenAI-compatible URL such as http://localhost:8000/v1"
)


@dataclass(frozen=True)
class ParsedSpec:
    kind: SpecKind
    value: str  # "default", the resolved path, or the URL


def parse_spec(spec: str) -> ParsedSpec:
    """Classify a model spec; LabalignError when it is none of the accepted forms."""
    text = spec.strip()
    if not text:
        raise LabalignError("empty model spec", hint=f"use {SPEC_FORMS}")
    if text == "default":
        return ParsedSpec("default", "default")
    if "://" in text:
        scheme = text.split("://", 1)[0].lower()
        if scheme not in ("http", "https"):
            raise LabalignError(
                f"unsupported URL scheme {scheme!r} in model spec {text!r}", hint=f"use {SPEC_FORMS}"
            )
        return ParsedSpec("url", text)
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return ParsedSpec("hf_dir", str(path.resolve()))
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        hint = f"did you mean {path / ggufs[0]}?" if ggufs else f"use {SPEC_FORMS}"
        raise LabalignError(
            "this directory is not a Hugging Face model (no config.json)", path=path, hint=hint
        )
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise LabalignError("no such GGUF file", path=path)
        return ParsedSpec("gguf", str(path.resolve()))
    if path.exists():
        raise LabalignError(
            "not a model: expected a .gguf file or a model directory", path=path, hint=f"use {SPEC_FORMS}"
        )
    raise LabalignError(f"unknown model {text!r}: no such file or directory", hint=f"use {SPEC_FORMS}")


def describe_spec(spec: str) -> str:
    """One line saying what a spec refers to and what will run it."""
    parsed = parse_spec(spec)
    if parsed.kind == "default":
        return "embedded Gemma 3 270M (Q4_K_M GGUF), run by llama.cpp or transformers"
    if parsed.kind == "gguf":
        return f"GGUF model {parsed.value}, run by llama.cpp"
    if parsed.kind == "hf_dir":
        return f"Hugging Face model directory {parsed.value}, run by transformers"
    return f"OpenAI-compatible server at {parsed.value}"


def llama_cpp_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def open_backend(
    spec: str,
    *,
    settings: LLMSettings | None = None,
    cache_dir: Path | None = None,
    prefer: Prefer = "auto",
) -> Backend:
    """A ready `Backend` for `spec` (see the module docstring for the accepted forms).

    `prefer` picks the in-process engine for `default` and `.gguf` specs: "auto" is llama.cpp when it is
    installed, else transformers on a converted copy (converted once into the cache); a directory is
    always run by transformers and a URL by the OpenAI-compatible client.
    """
    if prefer not in ("auto", "llamacpp", "transformers"):
        raise LabalignError(f"unknown engine {prefer!r}", hint="use auto, llamacpp or transformers")
    parsed = parse_spec(spec)
    cache = cache_dir if cache_dir is not None else default_cache_dir()

    if parsed.kind == "url":
        from labalign.llm.openai_backend import OpenAIBackend
        from labalign.settings.llm import LLMSettings

        return OpenAIBackend(parsed.value, settings=settings if settings is not None else LLMSettings())

    if parsed.kind == "hf_dir":
        if prefer == "llamacpp":
            raise LabalignError(
                "llama.cpp runs .gguf files, not Hugging Face directories",
                path=parsed.value,
                hint="drop --engine",
            )
        return _transformers(Path(parsed.value), settings)

    if parsed.kind == "default":
        from labalign.llm.default_model import default_gguf_path, default_hf_dir

        if _use_llamacpp(prefer):
            return _llamacpp(default_gguf_path(cache), settings)
        return _transformers(default_hf_dir(cache), settings)

    gguf_path = Path(parsed.value)
    if _use_llamacpp(prefer):
        return _llamacpp(gguf_path, settings)
    from labalign.llm.convert import convert_gguf, converted_dir_for

    out_dir = converted_dir_for(gguf_path, cache)
    convert_gguf(gguf_path, out_dir)
    return _transformers(out_dir, settings)


def transformers_available() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "transformers"))


def _use_llamacpp(prefer: Prefer) -> bool:
    if prefer == "transformers":
        return False
    if llama_cpp_available():
        return True
    if prefer == "llamacpp" or not transformers_available():
        raise LabalignError("running a GGUF model needs llama-cpp-python", hint=LLAMA_CPP_HINT)
    return False  # auto without llama.cpp: transformers on a converted copy still works, only slower


def _llamacpp(path: Path, settings: LLMSettings | None) -> Backend:
    from labalign.llm.llamacpp import LlamaCppBackend

    return LlamaCppBackend(path, n_gpu_layers=settings.gpu_layers if settings is not None else -1)


def _transformers(model_dir: Path, settings: LLMSettings | None) -> Backend:
    try:
        from labalign.llm.hf import TransformersBackend
    except ImportError as exc:
        raise LabalignError(
            f"running a Hugging Face model needs transformers and torch ({exc.name} is not installed)",
            hint=TRANSFORMERS_HINT,
        ) from exc
    from labalign.settings.llm import LLMSettings

    batch = (settings or LLMSettings()).local_batch_size
    return TransformersBackend(model_dir, batch_size=batch)


def open_cached_backend(
    spec: str, cache_path: Path, *, settings: LLMSettings | None = None, cache_dir: Path | None = None
) -> CachedBackend:
    """`open_backend` behind a request cache at `cache_path` (resume without asking twice). The cache
    opens first: a damaged one is found, and set aside, before a model takes a minute to load."""
    from labalign.llm.cache import CachedBackend, RequestCache

    cache = RequestCache(cache_path)
    try:
        backend = open_backend(spec, settings=settings, cache_dir=cache_dir)
    except BaseException:
        cache.close()
        raise
    return CachedBackend(backend, cache)
