"""GGUF file -> Hugging Face model directory (config, safetensors, tokenizer, chat template).

transformers reads a GGUF by dequantizing it, which is slow (tens of seconds for the default model,
mostly rebuilding the tokenizer), so a file is converted once and the directory reused: a marker file
records the GGUF's sha256, and a directory that already holds that conversion is left alone.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from labalign.errors import LabalignError
from labalign.llm.chat_template import DEFAULT_CHAT_TEMPLATE
from labalign.paths import default_cache_dir

MARKER = "labalign-conversion.json"
"""Written last into a converted directory: the source GGUF's sha256, so a rerun can skip the work."""

ConvertDtype = Literal["float32", "bfloat16"]
StepCallback = Callable[[str], None]

_TRANSFORMERS_HINT = "pip install torch 'transformers>=4.56' gguf sentencepiece"
_GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class Conversion:
    out_dir: Path
    gguf_sha256: str
    skipped: bool  # the directory already held this conversion
    seconds: float


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered by (size, mtime) so a large model is hashed once, not every run.

    The record lives next to the file (`NAME.sha256.json`), or in the cache when that folder is read-only.
    """
    path = path.resolve()
    stat = path.stat()
    key = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    for record in _hash_records(path):
        try:
            saved = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(saved, dict) and all(saved.get(k) == v for k, v in key.items()):
            digest = saved.get("sha256")
            if isinstance(digest, str) and len(digest) == 64:
                return digest
    digest = _hash_file(path)
    remember_sha256(path, digest)
    return digest


def remember_sha256(path: Path, digest: str) -> None:
    """Record a digest already known (e.g. verified while writing the file) for `file_sha256`."""
    path = path.resolve()
    stat = path.stat()
    blob = json.dumps({"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest})
    for record in _hash_records(path):
        try:
            record.parent.mkdir(parents=True, exist_ok=True)
            tmp = record.with_name(f"{record.name}.{os.getpid()}.tmp")
            tmp.write_text(blob, encoding="utf-8")
            os.replace(tmp, record)
            return
        except OSError:
            continue  # read-only folder: try the cache instead; failing both only costs a rehash


def _hash_records(path: Path) -> list[Path]:
    fallback = hashlib.sha256(str(path).encode("utf-8")).hexdigest()[:32]
    return [
        path.with_name(path.name + ".sha256.json"),
        default_cache_dir() / "file-hashes" / f"{fallback}.json",
    ]


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(4 * 1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


def check_gguf(path: Path) -> Path:
    """`path` resolved, or a LabalignError when it is not a readable GGUF file."""
    if not path.is_file():
        raise LabalignError("no such GGUF file", path=path)
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise LabalignError(f"cannot read the GGUF file: {exc.strerror}", path=path) from exc
    if magic != _GGUF_MAGIC:
        raise LabalignError("not a GGUF file (it does not start with 'GGUF')", path=path)
    return path.resolve()


_GGUF_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}


def gguf_metadata(path: Path, wanted: Callable[[str], bool] | None = None) -> dict[str, Any]:
    """Scalar and string metadata of a GGUF file (arrays are skipped), read from its header only.

    `wanted(key)` picks the keys to keep (default: all). Raises LabalignError on a malformed header.
    """
    found: dict[str, Any] = {}
    try:
        with path.open("rb") as f:
            if f.read(4) != _GGUF_MAGIC:
                raise LabalignError("not a GGUF file (it does not start with 'GGUF')", path=path)
            version, _tensors, kv_count = struct.unpack("<IQQ", f.read(20))
            if version < 2:
                raise LabalignError(f"GGUF version {version} is too old", path=path)
            for _ in range(kv_count):
                key = _read_gguf_string(f)
                (kind,) = struct.unpack("<I", f.read(4))
                value = _read_gguf_value(f, kind)
                if value is not _SKIPPED and (wanted is None or wanted(key)):
                    found[key] = value
    except (OSError, struct.error, UnicodeDecodeError, ValueError) as exc:
        raise LabalignError(f"cannot read the GGUF header: {exc}", path=path) from exc
    return found


_SKIPPED = object()


def _read_gguf_string(f: Any) -> str:
    (length,) = struct.unpack("<Q", f.read(8))
    data: bytes = f.read(length)
    if len(data) != length:
        raise ValueError("truncated string")
    return data.decode("utf-8")


def _read_gguf_value(f: Any, kind: int) -> Any:
    if kind in _GGUF_SCALARS:
        fmt = _GGUF_SCALARS[kind]
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
    if kind == 8:
        return _read_gguf_string(f)
    if kind == 9:
        item_kind, count = struct.unpack("<IQ", f.read(12))
        if item_kind in _GGUF_SCALARS:
            f.seek(struct.calcsize(_GGUF_SCALARS[item_kind]) * count, os.SEEK_CUR)
        else:
            for _ in range(count):
                _read_gguf_value(f, item_kind)
        return _SKIPPED
    raise ValueError(f"unknown GGUF value type {kind}")


def read_marker(model_dir: Path) -> dict[str, Any] | None:
    """The conversion record of a directory made by `convert_gguf`, or None."""
    try:
        data = json.loads((model_dir / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def converted_dir_for(gguf_path: Path, cache_dir: Path) -> Path:
    """Where the cache keeps the conversion of a GGUF: named after the file and its content."""
    digest = file_sha256(gguf_path)
    return cache_dir / "models" / "hf" / f"{gguf_path.stem}-{digest[:12]}"


def convert_gguf(
    gguf_path: Path,
    out_dir: Path,
    *,
    dtype: ConvertDtype = "float32",
    force: bool = False,
    on_step: StepCallback | None = None,
) -> Conversion:
    """Convert a GGUF into a Hugging Face directory, or reuse `out_dir` if it already holds it.

    The weights are dequantized; float32 keeps them exact, bfloat16 halves the size. A model without a
    chat template gets `DEFAULT_CHAT_TEMPLATE`. `on_step` hears a short description of each stage.
    """
    started = time.perf_counter()
    step = on_step or (lambda _msg: None)
    gguf_path = check_gguf(gguf_path)
    step("hashing the GGUF file")
    digest = file_sha256(gguf_path)
    marker = read_marker(out_dir)
    if (
        marker is not None
        and marker.get("gguf_sha256") == digest
        and marker.get("dtype") == dtype
        and not force
    ):
        return Conversion(out_dir, digest, skipped=True, seconds=time.perf_counter() - started)
    if out_dir.exists() and not force:
        if not out_dir.is_dir():
            raise LabalignError("the output path exists and is not a directory", path=out_dir)
        if any(out_dir.iterdir()):
            what = "a conversion of another GGUF" if marker is not None else "other files"
            raise LabalignError(
                f"the output directory already holds {what}",
                path=out_dir,
                hint="pick an empty directory, or pass --force to replace it",
            )

    torch, transformers = _import_transformers()
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with quiet_transformers(transformers), _gguf_read_once_quietly():
            step("reading the tokenizer")
            tokenizer = transformers.AutoTokenizer.from_pretrained(
                gguf_path.parent, gguf_file=gguf_path.name, local_files_only=True
            )
            step("dequantizing the weights")
            loaded = transformers.AutoModelForCausalLM.from_pretrained(
                gguf_path.parent, gguf_file=gguf_path.name, local_files_only=True, dtype=torch_dtype
            )
            step("rebuilding the model")
            model = _plain_copy(loaded, transformers, torch_dtype)
            del loaded
            if not getattr(tokenizer, "chat_template", None):
                tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
            step("writing safetensors")
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    except LabalignError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as exc:  # transformers raises ValueError/KeyError/... for unsupported files
        shutil.rmtree(tmp, ignore_errors=True)
        raise LabalignError(
            f"transformers could not convert this GGUF: {type(exc).__name__}: {exc}",
            path=gguf_path,
            hint="check that transformers supports the model's architecture",
        ) from exc

    seconds = time.perf_counter() - started
    record = {
        "gguf_sha256": digest,
        "gguf_path": str(gguf_path),
        "dtype": dtype,
        "transformers": transformers.__version__,
        "seconds": round(seconds, 2),
    }
    (tmp / MARKER).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    try:
        os.replace(tmp, out_dir)
    except OSError:
        # Another process finished the same conversion first: keep theirs if it is ours too.
        shutil.rmtree(tmp, ignore_errors=True)
        other = read_marker(out_dir)
        if other is None or other.get("gguf_sha256") != digest:
            raise
    return Conversion(out_dir, digest, skipped=False, seconds=seconds)


@contextmanager
def _gguf_read_once_quietly() -> Iterator[None]:
    """transformers parses a GGUF three times for one conversion (tokenizer, config, weights), each
    parse building every metadata field: 14 s apiece for the default model's 262k-token vocabulary on
    2 cores. One parse serves all three: the conversion took 50 s, now 30 s, writing the same files."""
    import gguf

    module: Any = gguf  # the class is swapped for a memoizing factory while converting
    original = module.GGUFReader
    readers: dict[tuple[str, str], Any] = {}

    def reader(path: Any, mode: str = "r") -> Any:
        key = (os.fspath(path), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    module.GGUFReader = reader
    # transformers' own tqdm for the tensors, which its progress-bar switch does not reach: the run
    # shows its own progress, and this bar broke its output on a machine's first run.
    loader: Any = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
    bar = getattr(loader, "tqdm", None)
    if bar is not None:
        loader.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        yield
    finally:
        module.GGUFReader = original
        if bar is not None:
            loader.tqdm = bar


def _plain_copy(loaded: Any, transformers: Any, torch_dtype: Any) -> Any:
    """The same weights in a model built from a clean config.

    A GGUF-loaded model carries a GGUF quantization config and quantizer hooks, which make
    `save_pretrained` refuse (or write a config that points back at the GGUF); a fresh instance has none.
    """
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = ""
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    return model


def _import_transformers() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise LabalignError(
            f"converting a GGUF needs transformers and torch ({exc.name} is not installed)",
            hint=_TRANSFORMERS_HINT,
        ) from exc
    try:
        import gguf  # noqa: F401  # transformers reads GGUF files through it
    except ImportError as exc:
        raise LabalignError("converting a GGUF needs the gguf package", hint=_TRANSFORMERS_HINT) from exc
    return torch, transformers


@contextmanager
def quiet_transformers(transformers: Any) -> Iterator[None]:
    """No tqdm bars or info chatter from transformers while we show our own progress."""
    logging = transformers.utils.logging
    verbosity = logging.get_verbosity()
    bars = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()
