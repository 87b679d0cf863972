"""The prose of a markdown document: its paragraphs and sentences, as fact questions, MMLU-branch items
and open-book retrieval all read it."""

from __future__ import annotations

import re

# A sentence ends at . ! ? (and any closing quote or bracket) before a space and a capital, digit or
# opening quote; a dot after a one-letter word ("c. 1200", "J. Pellow") is an abbreviation.
_SENTENCE_END = re.compile(r"(?<!\b[A-Za-z])[.!?][\"')\]\u201d\u2019]*(?=\s+[A-Z0-9\"'(\u201c\u2018])")
_LIST_MARK = re.compile(r"^\s*(?:[-*+]|\d{1,9}[.)])\s+")
_HEADING = re.compile(r"^ {0,3}#{1,6}(?:\s|$)")
_FENCE = re.compile(r"^ {0,3}(?:`{3,}|~{3,})")
MIN_WORDS = 5  # shorter "sentences" are captions, labels or fragments, not facts worth a question


def paragraphs(text: str) -> list[str]:
    """The prose of a markdown chunk: paragraphs and list items as single lines (headings, tables and
    code left out)."""
    out: list[str] = []
    current: list[str] = []
    in_fence = False
    skipping = False  # inside a list item that is left out (its continuation lines go too)

    def flush() -> None:
        if current:
            out.append(" ".join(current))
            current.clear()

    for line in text.splitlines():
        if _FENCE.match(line):
            flush()
            in_fence = not in_fence
            continue
        stripped = line.strip()
        if in_fence or not stripped or _HEADING.match(line) or stripped.startswith("|"):
            flush()
            skipping = False
            continue
        if _LIST_MARK.match(line):
            flush()
            stripped = _LIST_MARK.sub("", line).strip()
            # Timeline and glossary entries ("1911 — the Great Fall ...", '"tarn" — a small lake')
            # are left out: the student copied their terse form into its answers (6 of 12 held-out
            # answers in one quick run). A list item that reads as a sentence is kept.
            skipping = not stripped[:1].isupper()
        if skipping:
            continue
        current.append(stripped)
    flush()
    return out


def sentences(text: str) -> list[str]:
    """The sentences of a chunk's prose, in order, each with at least MIN_WORDS words."""
    out: list[str] = []
    for paragraph in paragraphs(text):
        start = 0
        ends = [m.end() for m in _SENTENCE_END.finditer(paragraph)]
        for end in [*ends, len(paragraph)]:
            sentence = paragraph[start:end].strip()
            start = end
            if len(sentence.split()) >= MIN_WORDS:
                out.append(sentence)
    return out
