"""The simulated SDG teacher: answers every skills prompt of labalign and of instructlab-sdg in the
format that prompt asks for, so that both tools' parsers and filters accept what they should.

Same model for both tools: each kind of output has one length (`WORDS`), judges write their
explanation only when the prompt asks for one (instructlab-sdg's do: "Begin your evaluation by
providing a short explanation"), and verdicts come from a hash of the prompt with the same odds for
both tools (`QUESTION_OK`, `RATINGS`). Text is drawn from a 2000-word vocabulary by a hash of
(prompt, choice, seed, item), so distinct requests give distinct, non-near-duplicate outputs and the
same request gives the same output. Pure standard library: it runs inside the simulated server.

Kinds (how a prompt is recognised, first match wins):
- question_score: labalign's prompt ends with `[Score]`; instructlab-sdg's asks for "a binary 0/1 scale"
- pair_score: `[Rating]`; "rate the answer on a scale of 1 to 3"
- answer: `[Answer]`; "Return the response between [Start of Response]"
- context: `[Context]`; "Start your response with the tag [Start of Context]"
- questions: `[Question]` (one); "Now generate N such questions" (N of them)
"""

from __future__ import annotations

import hashlib
import random
import re

WORDS = {"question": 18, "context": 110, "answer": 70, "explanation": 35}
QUESTION_OK = 0.9  # share of questions judged answerable (score 1)
RATINGS = ((3, 0.6), (2, 0.25), (1, 0.15))  # pair ratings and their odds: 85% are kept (>= 2)

_SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ne",
    "su",
    "ra",
    "ti",
    "vo",
    "pe",
    "da",
    "gu",
    "zen",
    "bor",
    "fa",
    "ly",
    "qui",
]
_VOCAB = sorted(
    {a + b + c for a in _SYLLABLES for b in _SYLLABLES for c in ("", "n", "s", "r", "l", "t", "m", "x")}
)[:2000]
_LABALIGN_TAGS = ("[Score]", "[Rating]", "[Answer]", "[Context]", "[Question]")
_GENERATE_N = re.compile(r"Now generate (\d+) such questions")


def _rng(*key: object) -> random.Random:
    digest = hashlib.sha256("\x00".join(map(str, key)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_VOCAB) for _ in range(words))


def _question(rng: random.Random) -> str:
    return _sentence(rng, WORDS["question"]).capitalize() + "?"


def _paragraph(rng: random.Random, words: int) -> str:
    sentences = [_sentence(rng, min(12, words - i)).capitalize() for i in range(0, words, 12)]
    return ". ".join(sentences) + "."


def _verdict(prompt: str, choice: int, kind: str) -> int:
    draw = _rng(prompt, choice, "verdict").random()
    if kind == "question_score":
        return 1 if draw < QUESTION_OK else 0
    edge = 0.0
    for rating, odds in RATINGS:
        edge += odds
        if draw < edge:
            return rating
    return RATINGS[-1][0]


def kind_of(prompt: str) -> str:
    tail = prompt.rstrip()
    if tail.endswith("[Score]") or "binary 0/1 scale" in prompt:
        return "question_score"
    if tail.endswith("[Rating]") or "rate the answer on a scale of 1 to 3" in prompt:
        return "pair_score"
    if tail.endswith("[Answer]") or "Return the response between [Start of Response]" in prompt:
        return "answer"
    if tail.endswith("[Context]") or "Start your response with the tag [Start of Context]" in prompt:
        return "context"
    if tail.endswith("[Question]") or _GENERATE_N.search(prompt):
        return "questions"
    return "unrecognised"


def answer(prompt: str, choice: int, seed: int | None) -> tuple[str, str]:
    """The whole text the teacher writes (before stop sequences and max_tokens) and the prompt's kind."""
    kind = kind_of(prompt)
    # labalign's prompts end at the tag the model continues after; instructlab-sdg's ask for tagged
    # output and end with the chat template's assistant turn.
    labalign = prompt.rstrip().endswith(_LABALIGN_TAGS)
    rng = _rng(prompt, choice, seed)
    if kind in ("question_score", "pair_score"):
        verdict = _verdict(prompt, choice, kind)
        if labalign:  # labalign's judge prompts end at the tag: the verdict, then the model goes on
            return f"{verdict}\n\n[Question]\n", kind
        explanation = _paragraph(rng, WORDS["explanation"])
        return (
            f"[Start of Evaluation]\n{explanation}\n[End of Evaluation]\n\n"
            f"[Start of Score]\n{verdict}\n[End of Score]\n"
        ), kind
    if kind == "answer":
        text = _paragraph(rng, WORDS["answer"])
        return (f"{text}\n[End]\n" if labalign else f"[Start of Response]\n{text}\n[End of Response]\n"), kind
    if kind == "context":
        text = _paragraph(rng, WORDS["context"])
        return (f"{text}\n[End]\n" if labalign else f"[Start of Context]\n{text}\n[End of Context]\n"), kind
    if kind == "questions":
        if labalign:
            return f"{_question(rng)}\n[End]\n", kind
        match = _GENERATE_N.search(prompt)
        count = int(match.group(1)) if match else 1
        items = [_question(_rng(prompt, choice, seed, i)) for i in range(count)]
        return "".join(f"[Start of Question]\n{q}\n[End of Question]\n\n" for q in items), kind
    return _sentence(rng, 8), kind
