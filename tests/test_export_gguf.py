"""GGUF export: each supported family, tiny and random, written by labalign and run by llama.cpp, gives
the same greedy tokens as transformers; the tokenizer, chat template and quantized files come along."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from labalign.cli import app
from labalign.errors import LabalignError
from labalign.export import Quant, export_gguf
from tests.tiny_models import TINY_CORPUS, tiny_llama_config, tiny_llama_dir, tiny_tokenizer

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed"
)

PROMPTS = ["What is the capital of France?", "The sea is wide, the wind", "Question: How many legs"]
STEPS = 12


def _save(path: Path, model: Any, tokenizer: Any) -> Path:
    with torch.no_grad():  # decisive logits: numerically close engines pick the same tokens
        model.get_output_embeddings().weight.mul_(8.0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _config_kwargs(vocab: int) -> dict[str, Any]:
    llama = tiny_llama_config(vocab).to_dict()
    keys: tuple[str, ...] = (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
    )
    keys += ("intermediate_size", "max_position_embeddings", "rms_norm_eps", "bos_token_id", "eos_token_id")
    return {k: llama[k] for k in (*keys, "pad_token_id")}


def _family(name: str) -> Callable[[Path], Path]:
    def build(path: Path) -> Path:
        import transformers

        tokenizer = tiny_tokenizer()
        kw = _config_kwargs(len(tokenizer))
        torch.manual_seed(0)
        model: Any
        config: Any
        if name == "llama":
            return tiny_llama_dir(path)
        if name == "qwen2":
            model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**kw, tie_word_embeddings=False))
            with torch.no_grad():  # q/k/v biases: random, so a lost bias shows
                for layer in model.model.layers:
                    for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                        proj.bias.normal_(0, 0.5)
        elif name == "qwen3":
            model = transformers.Qwen3ForCausalLM(
                transformers.Qwen3Config(**kw, head_dim=8, tie_word_embeddings=True)
            )
        elif name == "granite":
            config = transformers.GraniteConfig(
                **kw,
                embedding_multiplier=2.0,
                residual_multiplier=0.5,
                attention_multiplier=0.2,
                logits_scaling=1.5,
            )
            model = transformers.GraniteForCausalLM(config)
        else:  # gemma3: norms stored as w (applied as 1 + w), sliding window, tied head
            config = transformers.Gemma3TextConfig(
                **{**kw, "num_hidden_layers": 3}, head_dim=8, sliding_window=16, query_pre_attn_scalar=8
            )
            model = transformers.Gemma3ForCausalLM(config)
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n.endswith("norm.weight"):
                        p.normal_(0, 0.3)  # a norm exported without the +1 would change every answer
        return _save(path, model, tokenizer)

    return build


FAMILIES = ["llama", "qwen2", "qwen3", "granite", "gemma3"]


def _greedy_hf(model_dir: Path, ids: list[int]) -> list[int]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    out = model.generate(torch.tensor([ids]), max_new_tokens=STEPS, do_sample=False, min_new_tokens=STEPS)
    return list(out[0][len(ids) :].tolist())


def _greedy_cpp(gguf_path: Path, ids: list[int]) -> list[int]:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=128, n_threads=1, verbose=False)
    try:
        tokens: list[int] = []
        for token in llm.generate(ids, temp=0.0, top_k=1):
            tokens.append(token)
            if len(tokens) == STEPS:
                break
        return tokens
    finally:
        llm.close()


@pytest.mark.parametrize("family", FAMILIES)
def test_f16_export_answers_as_transformers_does(family: str, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    model_dir = _family(family)(tmp_path / family)
    result = export_gguf(model_dir, tmp_path / f"{family}.gguf", Quant.f16)
    assert result.path.is_file() and result.tensors > 0
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    for prompt in PROMPTS:
        ids = tokenizer(prompt)["input_ids"]
        assert _greedy_cpp(result.path, ids) == _greedy_hf(model_dir, ids), (family, prompt)


def test_tokenizer_and_chat_template_travel_in_the_file(tmp_path: Path) -> None:
    import gguf
    import llama_cpp
    from transformers import AutoTokenizer

    model_dir = tiny_llama_dir(tmp_path / "m")
    path = export_gguf(model_dir, tmp_path / "m.gguf").path
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, n_threads=1, verbose=False)
    try:
        for line in [*TINY_CORPUS.splitlines(), "Unseen words: zebra 42, café!"]:
            assert llm.tokenize(line.encode(), add_bos=True, special=True) == tokenizer(line)["input_ids"], (
                line
            )
    finally:
        llm.close()
    fields = gguf.GGUFReader(str(path)).fields
    template = bytes(fields["tokenizer.chat_template"].parts[-1]).decode()
    assert "<|assistant|>" in template and "{% generation %}" not in template  # transformers-only tag


@pytest.mark.parametrize("quant", [Quant.q8_0, Quant.q4_k_m])
def test_quantized_exports_are_made_by_llama_cpp_and_load(quant: Quant, tmp_path: Path) -> None:
    import gguf

    # Rows of 256 values: the k-quants' block size (smaller rows fall back to other types).
    model_dir = tiny_llama_dir(tmp_path / "m", hidden_size=256, intermediate_size=256, num_heads=4)
    f16 = export_gguf(model_dir, tmp_path / "f16.gguf", Quant.f16)
    small = export_gguf(model_dir, tmp_path / f"{quant}.gguf", quant)
    assert small.bytes < f16.bytes * 0.7
    kinds = {t.tensor_type.name for t in gguf.GGUFReader(str(small.path)).tensors}
    assert ("Q8_0" if quant is Quant.q8_0 else "Q4_K") in kinds
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*.partial"))
    ids = [1, 5, 6, 7]
    assert len(_greedy_cpp(small.path, ids)) == STEPS


def test_cli_export_gguf_and_ollama(tmp_path: Path) -> None:
    model_dir = tiny_llama_dir(tmp_path / "m")
    runner = CliRunner()
    result = runner.invoke(app, ["model", "export", str(model_dir), "--out", str(tmp_path / "m.gguf")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m.gguf").is_file() and "wrote" in result.stdout
    result = runner.invoke(
        app, ["model", "export", str(model_dir), "--format", "ollama", "--out", str(tmp_path / "ollama")]
    )
    assert result.exit_code == 0, result.output
    modelfile = (tmp_path / "ollama" / "Modelfile").read_text()
    assert "FROM ./m-f16.gguf" in modelfile and (tmp_path / "ollama" / "m-f16.gguf").is_file()
    assert "{{ .Content }}<|end|>" in modelfile and 'PARAMETER stop "<|end|>"' in modelfile
    assert 'PARAMETER stop "</s>"' in modelfile
    # Bad input: one line, exit 1.
    result = runner.invoke(app, ["model", "export", str(tmp_path), "--out", str(tmp_path / "x.gguf")])
    assert result.exit_code == 1 and "no config.json" in result.output
    result = runner.invoke(app, ["model", "export", str(model_dir), "--out", str(tmp_path / "x.bin")])
    assert result.exit_code == 1 and "--out must name a .gguf file" in result.output


def test_unknown_architecture_is_refused(tmp_path: Path) -> None:
    model_dir = tiny_llama_dir(tmp_path / "m")
    config = (model_dir / "config.json").read_text().replace("LlamaForCausalLM", "MambaForCausalLM")
    (model_dir / "config.json").write_text(config)
    with pytest.raises(LabalignError, match="does not know MambaForCausalLM"):
        export_gguf(model_dir, tmp_path / "m.gguf")
