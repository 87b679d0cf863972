"""Models behind one async interface: OpenAI-compatible servers, llama.cpp and transformers in-process."""

from labalign.llm.types import (
    Backend,
    Choice,
    GenerationParams,
    LLMCallError,
    LLMError,
    LLMRequest,
    LLMResult,
    Message,
)

__all__ = [
    "Backend",
    "Choice",
    "GenerationParams",
    "LLMCallError",
    "LLMError",
    "LLMRequest",
    "LLMResult",
    "Message",
]
