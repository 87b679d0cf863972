"""The chat template for models that have none (base models): the LLM layer prompts with it and the
trainer trains with it, so a tuned student is prompted exactly the way it was trained.

Plain-text role markers rather than special tokens: they exist in every vocabulary, so the template
works with any tokenizer without resizing embeddings.
"""

from __future__ import annotations

from typing import Any

DEFAULT_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}"
    "{{ message['content'] + '<|end|>' }}"
    "{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ message['content'] + '<|end|>\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
"""Renders `<|role|>\\ncontent<|end|>\\n` per message, then `<|assistant|>\\n` to prompt an answer.
`{% generation %}` marks assistant text so `apply_chat_template(..., return_assistant_tokens_mask=True)`
can tell the trainer which tokens carry the loss."""

DEFAULT_STOP: tuple[str, ...] = ("<|end|>", "<|user|>", "<|assistant|>", "<|system|>")
"""Stop strings for a model prompted with the default template: the end-of-turn marker, or the next role
header, which a base model that never learned `<|end|>` writes instead (the embedded 270M base began 33
of 71 held-out answers with `<|assistant|>` and repeated it to the token limit)."""


def ensure_chat_template(tokenizer: Any) -> bool:
    """Give a tokenizer without a chat template the default one; True when it was added."""
    if getattr(tokenizer, "chat_template", None):
        return False
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return True
