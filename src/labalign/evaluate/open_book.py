"""The open-book ceiling: each held-out knowledge question answered with the best-matching paragraphs
of its leaf's documents in the prompt (BM25 retrieval, bm25s), beside the same question answered
closed-book. It answers the user's first question, "fine-tune or retrieve?": base open-book is what
retrieval alone gives, tuned closed-book what tuning alone gives, tuned open-book both.

The prompt is the grounded skill's shape (passages, a blank line, the question), the shape labalign
trains grounded answers in, so a student that learned that skill reads the chunks as it was taught.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from labalign.documents import Chunk
from labalign.evaluate.questions import GROUNDED_PROMPT, EvalQuestion
from labalign.evaluate.results import OpenBookAnswer, OpenBookQuestion, OpenBookResult, OpenBookScore
from labalign.textmetrics import token_f1

# Passages (the documents' paragraphs) rather than whole 500-token chunks: the prompt stays short, which
# matters on a CPU (two chunks per question took about 6 minutes per model for the example's 100
# questions on 2 cores), and a small reader is not asked to find one sentence in a thousand tokens.
DEFAULT_K = 3


@dataclass(frozen=True)
class Passage:
    chunk: Chunk
    number: int  # 1-based, within the chunk
    text: str

    @property
    def where(self) -> str:
        return f"{self.chunk.source}:{self.chunk.start_line}-{self.chunk.end_line}#{self.number}"


def passages(chunks: Sequence[Chunk]) -> list[Passage]:
    """Every prose paragraph of the chunks (headings, tables and code left out); a chunk without prose
    is one passage."""
    from labalign.documents.prose import paragraphs

    out: list[Passage] = []
    for chunk in chunks:
        found = paragraphs(chunk.text) or [chunk.text.strip()]
        out += [Passage(chunk, j + 1, text) for j, text in enumerate(found) if text.strip()]
    return out


class Retriever:
    """BM25 over one leaf's passages, each indexed with its section headings (English stopwords removed,
    no stemming)."""

    def __init__(self, chunks: Sequence[Chunk]) -> None:
        import bm25s

        self.passages = passages(chunks)
        if not self.passages:
            raise ValueError("no text to retrieve from")
        self._index = bm25s.BM25()
        texts = [" ".join([*p.chunk.heading_path, p.text]) for p in self.passages]
        self._index.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)

    def top(self, query: str, k: int = DEFAULT_K) -> list[Passage]:
        """The k passages that best match the query, best first."""
        import bm25s

        tokens = bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)
        if not any(tokens):  # only stopwords: nothing to match, so the document's first passages
            return self.passages[:k]
        found, _ = self._index.retrieve(tokens, k=min(k, len(self.passages)), show_progress=False)
        return [self.passages[int(i)] for i in found[0]]

    def holding(self, reference: str) -> Passage:
        """The passage with the sentence that matches the reference answer best (token F1)."""
        from labalign.documents.prose import sentences

        def best(p: Passage) -> float:
            return max(token_f1(s, reference) for s in sentences(p.text) or [p.text])

        return max(self.passages, key=best)


@dataclass(frozen=True)
class Retrieved:
    question: EvalQuestion
    passages: tuple[Passage, ...]
    recall: bool  # the passage holding the reference's best-matching sentence is among them

    def prompt(self) -> str:
        context = "\n\n".join(p.text.strip() for p in self.passages)
        return GROUNDED_PROMPT.format(context=context, question=self.question.question.strip())


def retrieve(
    questions: Sequence[EvalQuestion], chunks_by_leaf: Mapping[str, Sequence[Chunk]], *, k: int = DEFAULT_K
) -> list[Retrieved]:
    """Each knowledge question with its leaf's top-k passages (questions of leaves without documents are
    left out)."""
    retrievers = {leaf: Retriever(chunks) for leaf, chunks in chunks_by_leaf.items() if chunks}
    out: list[Retrieved] = []
    for q in questions:
        retriever = retrievers.get(q.leaf)
        if retriever is None:
            continue
        top = retriever.top(q.question, k)
        out.append(Retrieved(q, tuple(top), retriever.holding(q.reference) in top))
    return out


def report(
    retrieved: Sequence[Retrieved],
    answers: Mapping[str, Sequence[str]],  # "base_closed", "tuned_closed", "base_open", "tuned_open"
    *,
    k: int,
) -> OpenBookResult:
    """Token F1 of every setting, overall and per leaf, with retrieval recall; `f1` is base open-book
    (the ceiling retrieval alone reaches)."""
    refs = [r.question.reference for r in retrieved]
    f1 = {name: [token_f1(a, ref) for a, ref in zip(ans, refs, strict=True)] for name, ans in answers.items()}

    def summary(index: Sequence[int]) -> OpenBookScore:
        return OpenBookScore(
            n=len(index),
            **{name: sum(values[i] for i in index) / len(index) for name, values in f1.items()},
            retrieval_recall=sum(retrieved[i].recall for i in index) / len(index),
        )

    leaves = sorted({r.question.leaf for r in retrieved})
    overall = summary(range(len(retrieved)))
    return OpenBookResult(
        retriever=f"BM25 (bm25s), top {k} paragraphs",
        k=k,
        f1=overall.base_open,
        **overall.model_dump(),
        leaves={
            leaf: summary([i for i, r in enumerate(retrieved) if r.question.leaf == leaf]) for leaf in leaves
        },
        questions=[
            OpenBookQuestion(
                leaf=r.question.leaf,
                question=r.question.question,
                reference=r.question.reference,
                passages=[p.where for p in r.passages],
                recall=r.recall,
                **{name: OpenBookAnswer(answer=answers[name][i], f1=f1[name][i]) for name in answers},
            )
            for i, r in enumerate(retrieved)
        ],
    )
