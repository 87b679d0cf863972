"""A Hugging Face checkpoint as a GGUF file for llama.cpp, Ollama and LM Studio.

The file is written with the `gguf` package's writer (tensor names from its per-architecture map, as
llama.cpp's own converter uses them) in float16, bfloat16 or float32; q8_0 and q4_k_m are then made
by llama.cpp's own quantizer through llama-cpp-python, never by code of ours. The tokenizer and the
chat template go into the file, so llama.cpp needs nothing else.

Families: Llama, Granite, Qwen 2, Qwen 3 and Gemma 3 (text). What differs between them is in
`ARCHES`: llama.cpp's name, the extra hyperparameters, and the tensor changes llama.cpp's graph
expects (Llama's rotary layout of q/k, Gemma's norms stored as 1 + weight).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import math
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from labalign.errors import LabalignError
from labalign.export.gguf_vocab import GgufVocab, read_vocab
from labalign.progress import ProgressCallback


class Quant(StrEnum):
    f32 = "f32"
    f16 = "f16"
    bf16 = "bf16"
    q8_0 = "q8_0"
    q4_k_m = "q4_k_m"


@dataclass(frozen=True)
class Arch:
    gguf_name: str  # llama.cpp's architecture
    permute_qk: bool = False  # HF's rotate-half q/k rows back to llama.cpp's interleaved rope layout
    norm_plus_one: bool = False  # Gemma's RMSNorm scales by (1 + w); llama.cpp by w


ARCHES: dict[str, Arch] = {
    "LlamaForCausalLM": Arch("llama", permute_qk=True),
    "GraniteForCausalLM": Arch("granite", permute_qk=True),
    "Qwen2ForCausalLM": Arch("qwen2"),
    "Qwen3ForCausalLM": Arch("qwen3"),
    "Gemma3ForCausalLM": Arch("gemma3", norm_plus_one=True),
}


@dataclass
class ExportResult:
    path: Path
    arch: str
    quant: Quant
    tensors: int
    bytes: int
    notes: list[str] = field(default_factory=list)
    chat_template: str | None = None  # the model folder's (the file's has no {% generation %} tags)
    eos_token: str | None = None


def export_gguf(
    model_dir: Path,
    out: Path,
    quant: Quant = Quant.f16,
    *,
    on_progress: ProgressCallback | None = None,
) -> ExportResult:
    """Write `model_dir` (a Hugging Face causal LM folder, weights merged) as the GGUF file `out`."""
    import gguf

    model_dir = Path(model_dir)
    config = _read_config(model_dir)
    arch = _arch(config, model_dir)
    vocab = read_vocab(model_dir, config)
    state = _load_state(model_dir)
    notes = list(vocab.notes)
    base = quant if quant in (Quant.f32, Quant.f16, Quant.bf16) else Quant.f16
    plain = out if base is quant else out.with_name(out.name + ".f16.tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = plain.with_name(plain.name + ".partial")
    try:
        writer = gguf.GGUFWriter(str(partial), arch.gguf_name)
        writer.add_name(str(config.get("_name_or_path") or model_dir.name))
        writer.add_file_type(_FILE_TYPES[base])
        _add_hparams(writer, arch, config)
        _add_vocab(writer, vocab)
        template = chat_template(model_dir)
        if template:
            writer.add_chat_template(_for_inference(template))
        count = _add_tensors(writer, arch, config, state, base, on_progress)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(partial, plain)
        if plain is not out:
            notes += _quantize(plain, out, quant, on_progress)
    finally:
        partial.unlink(missing_ok=True)
        if plain is not out:
            plain.unlink(missing_ok=True)
    eos = vocab.special_ids.get("eos")
    return ExportResult(
        out,
        arch.gguf_name,
        quant,
        count,
        out.stat().st_size,
        notes,
        chat_template=template,
        eos_token=vocab.tokens[eos] if eos is not None else None,
    )


def _read_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    if not path.is_file():
        raise LabalignError(
            "not a Hugging Face model folder (no config.json)",
            path=model_dir,
            hint="pass a folder such as runs/x/train/final; a LoRA adapter folder must be merged first",
        )
    config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return config


def _arch(config: dict[str, Any], model_dir: Path) -> Arch:
    names = config.get("architectures") or []
    for name in names:
        if name in ARCHES:
            return ARCHES[name]
    raise LabalignError(
        f"GGUF export does not know {', '.join(names) or 'this architecture'}",
        path=model_dir / "config.json",
        hint=f"supported: {', '.join(ARCHES)}",
    )


def _load_state(model_dir: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise LabalignError(
            "no .safetensors weights in the model folder",
            path=model_dir,
            hint="save the model with safe_serialization (transformers' default)",
        )
    state: dict[str, Any] = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def _rope_theta(config: dict[str, Any], layer_type: str = "full_attention") -> float:
    params = config.get("rope_parameters")
    if isinstance(params, dict) and isinstance(params.get(layer_type), dict):
        params = params[layer_type]  # per layer type (Gemma 3 under transformers 5)
    if isinstance(params, dict) and "rope_theta" in params:
        return float(params["rope_theta"])
    return float(config.get("rope_theta", 10000.0))


def _rope_scaling(config: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(kind, parameters) of the full-attention layers' rope scaling; None when there is none."""
    params = config.get("rope_parameters") or config.get("rope_scaling")
    if isinstance(params, dict) and isinstance(params.get("full_attention"), dict):
        params = params["full_attention"]
    if not isinstance(params, dict):
        return None
    kind = params.get("rope_type") or params.get("type")
    return None if kind in (None, "default") else (str(kind), params)


def _head_dim(config: dict[str, Any]) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def _add_hparams(writer: Any, arch: Arch, config: dict[str, Any]) -> None:
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = _head_dim(config)
    writer.add_context_length(int(config.get("max_position_embeddings", 4096)))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    if arch.gguf_name != "gemma3":
        writer.add_rope_dimension_count(head_dim)
    if arch.gguf_name == "gemma3" and config.get("sliding_window"):
        writer.add_sliding_window(int(config["sliding_window"]))
    if arch.gguf_name == "granite":
        writer.add_embedding_scale(float(config.get("embedding_multiplier", 1.0)))
        writer.add_residual_scale(float(config.get("residual_multiplier", 1.0)))
        writer.add_attention_scale(float(config.get("attention_multiplier", 1.0 / math.sqrt(head_dim))))
        writer.add_logit_scale(float(config.get("logits_scaling", 1.0)))
    scaling = _rope_scaling(config)
    if scaling is not None:
        kind, params = scaling
        if kind == "linear":
            import gguf

            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(float(params["factor"]))
        elif kind != "llama3":  # llama3: frequencies written as rope_freqs.weight (_llama3_rope_freqs)
            raise LabalignError(
                f"rope scaling {kind!r} is not supported by GGUF export yet",
                hint="supported: none, linear, llama3",
            )


def _add_vocab(writer: Any, vocab: GgufVocab) -> None:
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.merges is not None:
        writer.add_token_merges(vocab.merges)
    ids = vocab.special_ids
    for key, add in (
        ("bos", writer.add_bos_token_id),
        ("eos", writer.add_eos_token_id),
        ("unk", writer.add_unk_token_id),
        ("pad", writer.add_pad_token_id),
    ):
        if key in ids:
            add(ids[key])
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(False)
    if vocab.model == "llama":
        writer.add_add_space_prefix(vocab.add_space_prefix)


def chat_template(model_dir: Path) -> str | None:
    """The model's chat template (chat_template.jinja or tokenizer_config.json), None when it has none."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    tc = model_dir / "tokenizer_config.json"
    if tc.is_file():
        template = json.loads(tc.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(template, str):
            return template
    return None


def _for_inference(template: str) -> str:
    # {% generation %} marks the loss-carrying tokens for transformers' trainer; other Jinja engines
    # (llama.cpp's, Ollama's import) do not know the tag, and rendering is the same without it.
    return re.sub(r"{%-?\s*(end)?generation\s*-?%}", "", template)


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    # HF stores each head's rows as [first halves of the pairs; second halves] (rotate_half);
    # llama.cpp's LLAMA graph rotates adjacent pairs: interleave them back.
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _add_tensors(
    writer: Any,
    arch: Arch,
    config: dict[str, Any],
    state: dict[str, Any],
    base: Quant,
    on_progress: ProgressCallback | None,
) -> int:
    import gguf
    import torch

    blocks = int(config["num_hidden_layers"])
    names = gguf.get_tensor_name_map(_model_arch(arch.gguf_name), blocks)
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    tied = bool(config.get("tie_word_embeddings", arch.gguf_name == "gemma3"))
    items = [(k, v) for k, v in state.items() if not (tied and k == "lm_head.weight")]
    items = [(k, v) for k, v in items if not k.endswith("rotary_emb.inv_freq")]
    scaling = _rope_scaling(config)
    if scaling is not None and scaling[0] == "llama3":
        writer.add_tensor("rope_freqs.weight", _llama3_rope_freqs(config, scaling[1]))
    for done, (key, tensor) in enumerate(items, 1):
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise LabalignError(f"GGUF export cannot place tensor {key!r} ({arch.gguf_name})")
        data = tensor.to(torch.float32).numpy()
        if arch.permute_qk and key.endswith("q_proj.weight"):
            data = _permute(data, heads)
        elif arch.permute_qk and key.endswith("k_proj.weight"):
            data = _permute(data, kv_heads)
        if arch.norm_plus_one and key.endswith("norm.weight"):
            data = data + 1.0
        if data.ndim == 1 or base is Quant.f32:  # norms and biases stay float32, as llama.cpp's converter
            writer.add_tensor(name, data.astype(np.float32))
        elif base is Quant.f16:
            writer.add_tensor(name, data.astype(np.float16))
        else:
            packed = gguf.quants.quantize(data, gguf.GGMLQuantizationType.BF16)
            writer.add_tensor(name, packed, raw_dtype=gguf.GGMLQuantizationType.BF16)
        if on_progress is not None:
            on_progress("tensors", done, len(items))
    return len(items)


def _model_arch(name: str) -> Any:
    import gguf

    return next(arch for arch, arch_name in gguf.MODEL_ARCH_NAMES.items() if arch_name == name)


def _llama3_rope_freqs(config: dict[str, Any], scaling: dict[str, Any]) -> np.ndarray:
    """Llama 3.1's rope frequency factors, as llama.cpp reads them (rope_freqs.weight)."""
    base = _rope_theta(config)
    dim = _head_dim(config)
    factor = float(scaling.get("factor", 8.0))
    low = float(scaling.get("low_freq_factor", 1.0))
    high = float(scaling.get("high_freq_factor", 4.0))
    old_context = float(scaling.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_context / low, old_context / high
    factors = []
    for freq in 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)):
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


_FILE_TYPES = {Quant.f32: 0, Quant.f16: 1, Quant.bf16: 32}  # llama_ftype: ALL_F32, MOSTLY_F16, MOSTLY_BF16


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """What C code writes to file descriptor 2 meanwhile, kept instead of shown (one string, at exit)."""
    said: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield said
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            said.append(sink.read().decode("utf-8", "replace"))


def _quantize(source: Path, out: Path, quant: Quant, on_progress: ProgressCallback | None) -> list[str]:
    """llama.cpp's own quantizer (llama_model_quantize), on the float16 file just written; returns what
    it said a user should know (tensors whose rows the k-quants cannot take, quantized otherwise)."""
    try:
        import llama_cpp

        from labalign.llm.llamacpp import physical_cores
    except ImportError as exc:
        raise LabalignError(
            f"--quant {quant} needs llama-cpp-python (llama.cpp's quantizer)",
            hint="pip install llama-cpp-python, or export --quant f16",
        ) from exc
    ftype = {Quant.q8_0: llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, Quant.q4_k_m: llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype[quant]
    params.nthread = physical_cores()
    partial = out.with_name(out.name + ".partial")
    if on_progress is not None:
        on_progress(f"quantizing to {quant}", 0, 1)
    log = logging.getLogger("llama-cpp-python")  # llama.cpp logs one line per tensor at INFO
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with _captured_stderr() as said:  # and prints its fallbacks (q4_K -> q5_0 for 640-wide rows)
            status = llama_cpp.llama_model_quantize(
                str(source).encode(), str(partial).encode(), ctypes.byref(params)
            )
    finally:
        log.setLevel(level)
    if status != 0:
        partial.unlink(missing_ok=True)
        last = said[0].strip().splitlines()[-1:] if said else []
        raise LabalignError(
            f"llama.cpp could not quantize the model to {quant} (status {status})"
            + (f": {last[0]}" if last else ""),
            path=source,
        )
    os.replace(partial, out)
    if on_progress is not None:
        on_progress(f"quantizing to {quant}", 1, 1)
    fallback = re.search(
        r"(\d+) of (\d+) tensor\(s\) required fallback quantization", said[0] if said else ""
    )
    if fallback is None:
        return []
    return [
        f"llama.cpp quantized {fallback[1]} of {fallback[2]} tensors with another type (their rows are not a "
        f"multiple of the {quant} block size)"
    ]
