"""Builders for the trainer's tests: a tiny tokenizer, tiny random causal LMs saved as HF directories,
and messages JSONL files. No test here; the module is shared by tests/test_train_*.py."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

WORDS = [
    "the",
    "island",
    "of",
    "zorbia",
    "has",
    "a",
    "capital",
    "called",
    "quenta",
    "where",
    "people",
    "grow",
    "blue",
    "rice",
    "and",
    "sing",
    "at",
    "night",
    "what",
    "is",
    "how",
    "many",
    "why",
    "does",
    "tell",
    "me",
    "about",
    "write",
    "a",
    "poem",
    "summarize",
    "this",
    "answer",
    "question",
    "river",
    "mountain",
    "harbor",
    "festival",
    "rain",
    "seven",
    "eleven",
    "green",
    "north",
    "south",
]


def tiny_tokenizer(chat_template: str | None = None) -> Any:
    """A byte-level BPE tokenizer (about 400 tokens) trained in milliseconds on the words above."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [" ".join(WORDS), "<|system|>\n<|user|>\n<|assistant|>\n<|end|>\n"] * 4
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


def tiny_config(arch: str = "llama", *, vocab_size: int = 400, tie: bool = True, **overrides: Any) -> Any:
    """A 2-layer model config; weights initialised large enough that attention patterns matter."""
    if arch == "llama":
        from transformers import LlamaConfig

        kwargs: dict[str, Any] = dict(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            tie_word_embeddings=tie,
            initializer_range=0.1,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )
        kwargs.update(overrides)
        return LlamaConfig(**kwargs)
    if arch == "gemma3":
        from transformers import Gemma3TextConfig

        kwargs = dict(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention"],
            max_position_embeddings=1024,
            tie_word_embeddings=tie,
            initializer_range=0.1,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )
        kwargs.update(overrides)
        return Gemma3TextConfig(**kwargs)
    raise ValueError(arch)


def tiny_model(arch: str = "llama", *, seed: int = 0, tie: bool = True, **overrides: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(arch, tie=tie, **overrides)
    config._attn_implementation = "sdpa"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
    return model.eval()


def tiny_model_dir(
    path: Path, *, arch: str = "llama", seed: int = 0, tie: bool = True, chat_template: str | None = None
) -> Path:
    """Save a tiny random model and its tokenizer as a Hugging Face directory (no chat template unless
    given: a base model). Llama comes from the shared tests/tiny_models.py builder."""
    if arch == "llama":
        from tests.tiny_models import tiny_llama_dir

        return tiny_llama_dir(path, chat_template=chat_template, tie_word_embeddings=tie, seed=seed)
    tokenizer = tiny_tokenizer(chat_template)
    model = tiny_model(arch, seed=seed, tie=tie, vocab_size=len(tokenizer))
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def backward(loss: Any) -> None:
    """`Tensor.backward` is unannotated in torch: one typed call site for the tests."""
    loss.backward()


def make_records(n: int, *, seed: int = 0, min_words: int = 2, max_words: int = 12) -> list[dict[str, Any]]:
    """Conversations of varied length: some with a system prompt, some multi-turn, some unmasked."""
    rng = random.Random(seed)

    def text() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words)))

    records = []
    for i in range(n):
        messages = []
        if rng.random() < 0.3:
            messages.append({"role": "system", "content": text()})
        for _ in range(rng.choice((1, 1, 2))):
            messages.append({"role": "user", "content": text() + "?"})
            messages.append({"role": "assistant", "content": text() + "."})
        records.append({"id": f"s{i}", "messages": messages, "metadata": {}, "unmask": rng.random() < 0.1})
    return records


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path
