"""Settings of the LLM layer: how hard and how wide to talk to a model server, and whether to cache."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class LLMSettings(BaseModel):
    """The `llm:` section of labalign.yaml (LABALIGN_LLM__<KEY> in the environment)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    max_concurrency: int = Field(
        64,
        ge=1,
        le=4096,
        description="Requests in flight at once per backend; 64 is enough to saturate a vLLM server.",
    )
    request_timeout_s: float = Field(
        120.0, gt=0, description="Seconds one attempt of one request may take before it is abandoned."
    )
    max_attempts: int = Field(
        6, ge=1, le=100, description="Attempts per request (first try + retries) on transient errors."
    )
    backoff_base_s: float = Field(
        0.5, ge=0, description="First retry waits up to this many seconds; the bound doubles per retry."
    )
    backoff_max_s: float = Field(
        30.0, ge=0, description="Longest wait between two attempts, Retry-After included."
    )
    api_key_env: str = Field(
        "OPENAI_API_KEY",
        min_length=1,
        description="Environment variable holding the API key of an OpenAI-compatible server.",
    )
    model_name: str | None = Field(
        None, description="Model to request from an OpenAI-compatible server; unset: the first it lists."
    )
    use_chat_endpoint: bool = Field(
        True,
        description="Send chat requests to /v1/chat/completions; false: render labalign's default chat "
        "template and use /v1/completions (for base models served without a chat template).",
    )
    local_batch_size: int = Field(
        64,
        ge=1,
        le=1024,
        description="Prompts decoded together by an in-process transformers model (evaluation, a "
        "Hugging Face teacher); on 2 CPU cores 32 held-out questions took 30 s in one batch against 65 s "
        "in batches of 8.",
    )
    gpu_layers: int = Field(
        -1,
        ge=-1,
        description="GGUF models run by llama.cpp: how many layers go to the GPU (-1: all, 0: none). "
        "A llama.cpp built without GPU support runs every layer on the CPU whatever this says.",
    )
    cache: bool = Field(
        True, description="Keep every successful model answer in a request cache so a killed run resumes."
    )
