"""Tiny randomly initialised models for tests: built in milliseconds, nothing downloaded.

    from tests.tiny_models import tiny_llama_dir, tiny_llama_gguf

    model_dir = tiny_llama_dir(tmp_path / "tiny")            # HF dir: config, safetensors, tokenizer
    gguf_file = tiny_llama_gguf(tmp_path / "tiny.gguf")        # the same kind of model as a GGUF file

The tokenizer is a byte-level BPE trained on a small built-in corpus, so it encodes any text (unknown
words fall back to bytes). Its chat template is `DEFAULT_CHAT_TEMPLATE` unless told otherwise.
Everything is deterministic: the same arguments give the same files, token ids and weights.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

# Tests never reach a model hub; set before transformers/huggingface_hub read it at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from labalign.llm.chat_template import DEFAULT_CHAT_TEMPLATE

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS)

TINY_CORPUS = """\
<|system|>
You are a helpful assistant.<|end|>
<|user|>
What is the capital of France?<|end|>
<|assistant|>
The capital of France is Paris.<|end|>
<|user|>
Write a short poem about the sea and the wind.<|end|>
<|assistant|>
The sea is wide, the wind is free, the waves come rolling back to me.<|end|>
Question: How many legs does a spider have? Answer: A spider has eight legs.
Knowledge documents are split into chunks, and each chunk grounds new questions and answers.
The teacher model writes synthetic examples; the student model learns from them in two phases.
"""


def tiny_tokenizer(
    *,
    vocab_size: int = 384,
    extra_tokens: Sequence[str] = (),
    chat_template: str | None = DEFAULT_CHAT_TEMPLATE,
    model_max_length: int = 256,
    corpus: str = TINY_CORPUS,
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer: `<pad>`=0, `<s>`=1 (added in front of every encoding), `</s>`=2.

    `vocab_size` counts the 3 special tokens and the 256 byte symbols, so it must be >= 259; the rest
    are merges learned from `corpus`. `extra_tokens` are appended as whole (non-special) tokens.
    """
    if vocab_size < len(SPECIAL_TOKENS) + 256:
        raise ValueError(f"vocab_size must be at least {len(SPECIAL_TOKENS) + 256}")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus.splitlines(), trainer=trainer)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, BOS_ID)]
    )
    tokenizer: PreTrainedTokenizerFast = cast(Any, PreTrainedTokenizerFast)(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=model_max_length,
    )
    if extra_tokens:
        tokenizer.add_tokens(list(extra_tokens))
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def tiny_llama_config(
    vocab_size: int,
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 64,
    max_position_embeddings: int = 256,
    tie_word_embeddings: bool = False,
) -> LlamaConfig:
    """A Llama config small enough that a forward pass takes a millisecond."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )


def tiny_llama_dir(
    path: Path,
    *,
    vocab_size: int = 384,
    extra_tokens: Sequence[str] = (),
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 64,
    max_position_embeddings: int = 256,
    tie_word_embeddings: bool = False,
    chat_template: str | None = DEFAULT_CHAT_TEMPLATE,
    seed: int = 0,
) -> Path:
    """Write a random tiny Llama as a Hugging Face directory (config.json, model.safetensors,
    tokenizer.json, tokenizer_config.json, generation_config.json) and return `path`.

    `chat_template=None` gives a tokenizer without a chat template, as a base model has.
    """
    tokenizer = tiny_tokenizer(
        vocab_size=vocab_size,
        extra_tokens=extra_tokens,
        chat_template=chat_template,
        model_max_length=max_position_embeddings,
    )
    config = tiny_llama_config(
        len(tokenizer),
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # Random init gives near-uniform logits; a wider spread makes greedy decoding decisive, so
    # numerically equivalent computations (batched vs single) pick the same tokens.
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_llama_gguf(path: Path, *, model_dir: Path | None = None, chat_template: str | None = None) -> Path:
    """Write a tiny Llama as an F32 GGUF file (llama.cpp's tensor names and layout) and return `path`.

    The weights and tokenizer are those of `model_dir` (made with `tiny_llama_dir`, untied embeddings),
    or of a fresh `tiny_llama_dir` next to `path`. `chat_template` is stored in the file's metadata.
    """
    import gguf

    if model_dir is None:
        model_dir = tiny_llama_dir(path.with_name(path.stem + "-hf"))
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = model.config
    tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir)
    head_dim = config.hidden_size // config.num_attention_heads

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(_kv_heads(config))
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(_rope_theta(config)))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    tokens, token_types = _gguf_vocab(tokenizer)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(_merges(tokenizer))
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_pad_token_id(PAD_ID)
    writer.add_add_bos_token(True)
    if chat_template is not None:
        writer.add_chat_template(chat_template)

    state = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    writer.add_tensor("output.weight", state["lm_head.weight"])
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        q = _permute_for_llamacpp(state[p + "self_attn.q_proj.weight"], config.num_attention_heads)
        k = _permute_for_llamacpp(state[p + "self_attn.k_proj.weight"], _kv_heads(config))
        tensors = {
            "attn_norm": state[p + "input_layernorm.weight"],
            "attn_q": q,
            "attn_k": k,
            "attn_v": state[p + "self_attn.v_proj.weight"],
            "attn_output": state[p + "self_attn.o_proj.weight"],
            "ffn_norm": state[p + "post_attention_layernorm.weight"],
            "ffn_gate": state[p + "mlp.gate_proj.weight"],
            "ffn_up": state[p + "mlp.up_proj.weight"],
            "ffn_down": state[p + "mlp.down_proj.weight"],
        }
        for name, array in tensors.items():
            writer.add_tensor(f"blk.{i}.{name}.weight", array)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _kv_heads(config: Any) -> int:
    return int(config.num_key_value_heads or config.num_attention_heads)


def _rope_theta(config: Any) -> float:
    # transformers 5 keeps rope_theta inside rope_parameters; older versions on the config itself.
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and "rope_theta" in params:
        return float(params["rope_theta"])
    return float(config.rope_theta)


def _permute_for_llamacpp(weight: np.ndarray[Any, Any], n_heads: int) -> np.ndarray[Any, Any]:
    """llama.cpp stores q/k rows interleaved per head (its RoPE pairs adjacent dims), as
    convert_hf_to_gguf.py does; transformers' GGUF loader undoes exactly this."""
    rows = weight.shape[0]
    return (
        weight.reshape(n_heads, 2, rows // n_heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _gguf_vocab(tokenizer: PreTrainedTokenizerFast) -> tuple[list[str], list[int]]:
    """Tokens in id order and their llama.cpp types (1 normal, 3 control, 4 user-defined)."""
    import gguf

    vocab = tokenizer.get_vocab()
    by_id = sorted(vocab.items(), key=lambda item: item[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise ValueError("token ids are not contiguous")
    special = set(tokenizer.all_special_tokens)
    added = {t.content for t in tokenizer.added_tokens_decoder.values()}
    types = []
    for token, _ in by_id:
        if token in special:
            types.append(int(gguf.TokenType.CONTROL))
        elif token in added:
            types.append(int(gguf.TokenType.USER_DEFINED))
        else:
            types.append(int(gguf.TokenType.NORMAL))
    return [t for t, _ in by_id], types


def _merges(tokenizer: PreTrainedTokenizerFast) -> list[str]:
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    return [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
