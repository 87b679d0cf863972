"""The open-book ceiling: each held-out knowledge question answered with the best-matching chunks of
its leaf's documents in the prompt (BM25 retrieval, bm25s), beside the same question answered
closed-book. It answers the user's first question, "fine-tune or retrieve?": base open-book is what
retrieval alone gives, tuned closed-book what tuning alone gives, tuned open-book both.

The prompt is the grounded skill's shape (chunks, a blank line, the question), the shape labalign
trains grounded answers in, so a student that learned that skill reads the chunks as it was taught.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from labalign.documents import Chunk
from labalign.evaluate.questions import GROUNDED_PROMPT, EvalQuestion
from labalign.textmetrics import token_f1

DEFAULT_K = 2  # chunks in the prompt: two of labalign's 500-token chunks fit a 2k context with the answer


class Retriever:
    """BM25 over one leaf's chunks (English stopwords removed, no stemming)."""

    def __init__(self, chunks: Sequence[Chunk]) -> None:
        import bm25s

        if not chunks:
            raise ValueError("no chunks to retrieve from")
        self.chunks = list(chunks)
        self._index = bm25s.BM25()
        corpus = bm25s.tokenize([c.text for c in self.chunks], stopwords="en", show_progress=False)
        self._index.index(corpus, show_progress=False)

    def top(self, query: str, k: int = DEFAULT_K) -> list[Chunk]:
        """The k chunks that best match the query, best first (document order among equal scores)."""
        import bm25s

        tokens = bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)
        if not any(tokens):  # only stopwords: nothing to match, so the document's first chunks
            return self.chunks[:k]
        found, _ = self._index.retrieve(tokens, k=min(k, len(self.chunks)), show_progress=False)
        return [self.chunks[int(i)] for i in found[0]]


@dataclass(frozen=True)
class Retrieved:
    question: EvalQuestion
    chunks: tuple[Chunk, ...]
    recall: bool  # the chunk holding the reference's best-matching sentence is among them

    def prompt(self) -> str:
        context = "\n\n".join(c.text.strip() for c in self.chunks)
        return GROUNDED_PROMPT.format(context=context, question=self.question.question.strip())


def _answer_chunk(reference: str, chunks: Sequence[Chunk]) -> int:
    """The index of the chunk whose text matches the reference answer best (token F1 per sentence)."""
    from labalign.sdg.facts import sentences

    best, best_score = 0, -1.0
    for i, chunk in enumerate(chunks):
        for sentence in sentences(chunk.text) or [chunk.text]:
            score = token_f1(sentence, reference)
            if score > best_score:
                best, best_score = i, score
    return best


def retrieve(
    questions: Sequence[EvalQuestion], chunks_by_leaf: Mapping[str, Sequence[Chunk]], *, k: int = DEFAULT_K
) -> list[Retrieved]:
    """Each knowledge question with its leaf's top-k chunks (questions of leaves without documents are
    left out)."""
    retrievers = {leaf: Retriever(chunks) for leaf, chunks in chunks_by_leaf.items() if chunks}
    out: list[Retrieved] = []
    for q in questions:
        retriever = retrievers.get(q.leaf)
        if retriever is None:
            continue
        top = retriever.top(q.question, k)
        target = retriever.chunks[_answer_chunk(q.reference, retriever.chunks)]
        out.append(Retrieved(q, tuple(top), any(c.index == target.index for c in top)))
    return out


def report(
    retrieved: Sequence[Retrieved],
    answers: dict[str, Sequence[str]],  # "base_closed", "tuned_closed", "base_open", "tuned_open"
    *,
    k: int,
) -> dict[str, Any]:
    """Token F1 of every setting, overall and per leaf, with retrieval recall; `f1` is base open-book
    (the ceiling retrieval alone reaches)."""
    refs = [r.question.reference for r in retrieved]
    f1 = {name: [token_f1(a, ref) for a, ref in zip(ans, refs, strict=True)] for name, ans in answers.items()}

    def summary(index: Sequence[int]) -> dict[str, Any]:
        out: dict[str, Any] = {"n": len(index)}
        for name, values in f1.items():
            out[name] = sum(values[i] for i in index) / len(index)
        out["retrieval_recall"] = sum(retrieved[i].recall for i in index) / len(index)
        return out

    leaves = sorted({r.question.leaf for r in retrieved})
    overall = summary(range(len(retrieved)))
    return {
        "retriever": f"BM25 (bm25s), top {k} chunks",
        "k": k,
        "f1": overall.get("base_open"),
        **overall,
        "leaves": {
            leaf: summary([i for i, r in enumerate(retrieved) if r.question.leaf == leaf]) for leaf in leaves
        },
        "questions": [
            {
                "leaf": r.question.leaf,
                "question": r.question.question,
                "reference": r.question.reference,
                "chunks": [f"{c.source}:{c.start_line}-{c.end_line}" for c in r.chunks],
                "recall": r.recall,
                **{name: {"answer": answers[name][i], "f1": f1[name][i]} for name in answers},
            }
            for i, r in enumerate(retrieved)
        ],
    }
