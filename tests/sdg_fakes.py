"""A scripted teacher: answers each LAB prompt by its final tag, deterministically from the request."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence

from labalign.llm.types import Backend, Choice, LLMRequest, LLMResult, ResultCallback

WORDS = [
    "harbour",
    "lantern",
    "granite",
    "willow",
    "copper",
    "meadow",
    "falcon",
    "quarry",
    "ember",
    "tide",
    "saffron",
    "orchard",
    "beacon",
    "glacier",
    "thistle",
    "cobalt",
    "marsh",
    "lattice",
    "cedar",
    "plume",
    "summit",
    "ferry",
    "quill",
    "basalt",
]


def words(key: str, n: int) -> str:
    digest = hashlib.sha256(key.encode()).digest()
    return " ".join(WORDS[b % len(WORDS)] for b in digest[:n])


def prompt_text(request: LLMRequest) -> str:
    if request.prompt is not None:
        return request.prompt
    assert request.messages is not None
    return request.messages[-1].content


class ScriptedTeacher(Backend):
    """Plausible, parseable output for every prompt of the shipped pipelines; counts calls.

    `bad_every`: every k-th answer is garbage (unparseable) so funnels show drops."""

    def __init__(self, bad_every: int = 0, low_scores: bool = False) -> None:
        self.calls = 0
        self.bad_every = bad_every
        self.low_scores = low_scores

    @property
    def identity(self) -> str:
        return "scripted:v1"

    @property
    def context_window(self) -> int | None:
        return 8192

    def answer(self, request: LLMRequest) -> str:
        text = prompt_text(request).rstrip()
        key = f"{text}/{request.params.seed}/{request.sample_index}"
        self.calls += 1
        if self.bad_every and self.calls % self.bad_every == 0 and not text.endswith("[Question]"):
            return "???"
        if text.endswith(("[Score]", "[Rating]", "[Supported]")):
            if self.low_scores:
                return " 0" if text.endswith("[Score]") else " 1" if text.endswith("[Rating]") else " NO"
            top = " 2" if "2 if it answers it fully" in text else " 3"  # relevancy is 0-2, pairs 1-3
            return {"[Score]": " 1", "[Rating]": top, "[Supported]": " YES"}[text[text.rindex("[") :]]
        if text.endswith("[Document]") or ("[Document]" in text and text.endswith("[Question]")):
            return (
                f"What is the {words(key + 'q1', 6)}?\n[Answer]\nIt is the {words(key + 'a1', 5)}.\n"
                f"[Question]\nWho built the {words(key + 'q2', 6)}?\n"
                f"[Answer]\nThe {words(key + 'a2', 4)}.\n[End]"
            )
        if "[Fact]" in text and text.endswith("[Question]"):
            # A question about the fact: its first words (so it overlaps) and a random tail.
            fact = text[text.rindex("[Fact]") + len("[Fact]") : text.rindex("[Question]")].split()
            return f"What is known about {' '.join(fact[:4])} and the {words(key, 3)}?\n"
        if text.endswith("[Question]"):
            return f"Please describe the {words(key, 8)}?\n[End]"
        if text.endswith("[Answer]"):
            return f"The answer is {words(key, 10)}.\n[End]"
        if text.endswith("[Context]"):
            return f"Notes: {words(key, 12)}. Sam will {words(key + 'x', 4)} by Friday.\n[End]"
        return f"{words(key, 15)}."

    async def generate(
        self, requests: Sequence[LLMRequest], *, on_result: ResultCallback | None = None
    ) -> list[LLMResult]:
        out = []
        for request in requests:
            text = self.answer(request)
            result = LLMResult(
                request,
                (Choice(text, "stop"),),
                prompt_tokens=len(prompt_text(request).split()),
                completion_tokens=len(text.split()),
            )
            if on_result is not None:
                on_result(result)
            out.append(result)
        return out

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        yield self.answer(request)

    async def aclose(self) -> None:
        return None
