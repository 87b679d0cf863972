"""A judge model rates an answer 1-10 against the reference (MT-Bench's single-answer grading)."""

from __future__ import annotations

import re

JUDGE_PROMPT = (
    "Please act as an impartial judge and evaluate the quality of the response provided by an AI "
    "assistant to the user question below. A reference answer is given: judge correctness against it, "
    "then helpfulness and clarity. Begin with a short explanation, then give your rating on a scale of "
    '1 to 10 strictly in this format: "Rating: [[5]]".\n'
    + """
[Question]
{question}

[Reference Answer]
{reference}

[The Assistant's Answer]
{answer}
"""
)

# Most to least specific: MT-Bench's [[n]], then "Rating: n", "n/10", a lone number.
_PATTERNS = [
    re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]"),
    re.compile(r"rating\s*[:=]?\s*\**\s*(\d+(?:\.\d+)?)", re.IGNORECASE),
    re.compile(r"(\d+(?:\.\d+)?)\s*/\s*10\b"),
    re.compile(r"^\s*(\d+(?:\.\d+)?)\s*$", re.MULTILINE),
]


def judge_prompt(question: str, reference: str, answer: str) -> str:
    return JUDGE_PROMPT.format(question=question.strip(), reference=reference.strip(), answer=answer.strip())


def parse_rating(text: str) -> float | None:
    """The 1-10 rating in a judge's reply, or None when there is none (counted, never dropped)."""
    for pattern in _PATTERNS:
        for match in pattern.finditer(text):
            value = float(match.group(1))
            if 1 <= value <= 10:
                return value
    return None
