"""Training records and the LAB mixes: phase 1 = knowledge, phase 2 = skills + replay of phase 1.

Every record is exactly `{id, messages: [{role, content}], metadata, unmask}`: the shape InstructLab
training, TRL and most SFT tools read.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Sequence
from typing import Any

from labalign.documents import Chunk
from labalign.sdg.rows import Row, stable_int
from labalign.taxonomy import Leaf

Record = dict[str, Any]

CONTEXT_PROMPT = "Answer the question using the context.\n\nContext:\n{context}\n\nQuestion:\n{question}"
GROUNDED_PROMPT = "{context}\n\n{question}"
SUMMARY_PROMPTS = {
    "summary": "Write a detailed summary of this passage.\n\n{chunk}",
    "extractive": "Copy the most important sentences of this passage.\n\n{chunk}",
    "facts": "List the facts stated in this passage, one per line.\n\n{chunk}",
}


def record(messages: list[dict[str, str]], metadata: dict[str, Any], system_prompt: str) -> Record:
    if system_prompt:
        messages = [{"role": "system", "content": system_prompt}, *messages]
    body = json.dumps(messages, sort_keys=True, ensure_ascii=False)
    rid = hashlib.sha256(f"{metadata.get('leaf', '')}\n{body}".encode()).hexdigest()[:16]
    return {"id": rid, "messages": messages, "metadata": metadata, "unmask": False}


def _turn(user: str, assistant: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def sample_records(
    row: Row, provenance: dict[str, Any], system_prompt: str, *, context_variant: bool
) -> list[Record]:
    """The training records one kept sample gives: its primary form (and, for knowledge, the
    context-in-prompt variant, so the model both recalls the fact and reads it from a context)."""
    question, answer = str(row["question"]), str(row["answer"])
    kind = provenance["kind"]
    if kind == "grounded_skill":
        user = GROUNDED_PROMPT.format(context=str(row["context"]).strip(), question=question)
        return [record(_turn(user, answer), {**provenance, "variant": "grounded"}, system_prompt)]
    out = [record(_turn(question, answer), {**provenance, "variant": "closed_book"}, system_prompt)]
    if kind == "knowledge" and context_variant:
        user = CONTEXT_PROMPT.format(context=str(row["chunk"]).strip(), question=question)
        out.append(record(_turn(user, answer), {**provenance, "variant": "context_in_prompt"}, system_prompt))
    return out


def fact_record(row: Row, provenance: dict[str, Any], system_prompt: str) -> Record:
    """A fact question with its document sentence as the answer (labalign.sdg.facts)."""
    meta = {**provenance, "variant": "fact"}
    return record(_turn(str(row["question"]), str(row["answer"])), meta, system_prompt)


def augmentation_records(rows: Iterable[Row], leaf_meta: dict[str, Any], system_prompt: str) -> list[Record]:
    """Document-grounded augmentations (summaries, key sentences, facts) once per chunk: they show
    the student the document's content in several wordings, which LAB's knowledge phase relies on."""
    seen: set[tuple[int, str]] = set()
    out: list[Record] = []
    for row in rows:
        for column, template in SUMMARY_PROMPTS.items():
            key = (int(row.get("chunk_index", -1)), column)
            if key in seen or not row.get(column):
                continue
            seen.add(key)
            meta = {
                **leaf_meta,
                "variant": f"augmentation:{column}",
                "chunk_index": row.get("chunk_index"),
                "chunk_source": row.get("chunk_source"),
                "chunk_lines": row.get("chunk_lines"),
            }
            user = template.format(chunk=str(row["chunk"]).strip())
            out.append(record(_turn(user, str(row[column])), meta, system_prompt))
    return out


DOCUMENT_PROMPT = 'What does the document "{title}" say about {topic}?'


def document_records(chunks: Iterable[Chunk], leaf_meta: dict[str, Any], system_prompt: str) -> list[Record]:
    """Every chunk of a knowledge leaf's documents as the answer about its section. Teacher Q&A only
    covers the chunks it was asked about; this shows the student the whole document, as InstructLab's
    knowledge phase does with its raw-document (pretraining-format) records."""
    out: list[Record] = []
    for chunk in chunks:
        path = [h for h in chunk.heading_path if h.strip()]
        title = path[0] if path else chunk.source
        topic = " > ".join(path[1:]) if len(path) > 1 else "its opening section"
        meta = {
            **leaf_meta,
            "variant": "document",
            "chunk_index": chunk.index,
            "chunk_source": chunk.source,
            "chunk_lines": [chunk.start_line, chunk.end_line],
        }
        user = DOCUMENT_PROMPT.format(title=title, topic=topic)
        out.append(record(_turn(user, chunk.text.strip()), meta, system_prompt))
    return out


def document_pretraining_records(chunks: Iterable[Chunk], leaf_meta: dict[str, Any]) -> list[Record]:
    """Every chunk of a knowledge leaf's documents as plain text trained on every token (InstructLab's
    `pretraining` role): the student reads the document as it read text in pre-training."""
    out: list[Record] = []
    for chunk in chunks:
        text = chunk.text.strip()
        if not text:
            continue
        meta = {
            **leaf_meta,
            "variant": "document:pretraining",
            "chunk_index": chunk.index,
            "chunk_source": chunk.source,
            "chunk_lines": [chunk.start_line, chunk.end_line],
        }
        rid = hashlib.sha256(f"{leaf_meta.get('leaf', '')}\npretraining\n{text}".encode()).hexdigest()[:16]
        out.append(
            {
                "id": rid,
                "messages": [{"role": "pretraining", "content": text}],
                "metadata": meta,
                "unmask": False,
            }
        )
    return out


def seed_records(leaf: Leaf, system_prompt: str, *, context_variant: bool) -> list[Record]:
    """The leaf's own hand-written examples as training records, in the same shapes as generated ones.
    They are the best data a leaf has (and teach the answer style: a 270M teacher's answers ramble);
    train on them only when the seed questions are not also used for evaluation."""
    out: list[Record] = []
    for seed in leaf.seed_examples:
        for i, qna in enumerate(seed.qna):
            row: Row = {"question": qna.question, "answer": qna.answer}
            if leaf.kind == "knowledge":
                row["chunk"] = seed.context or ""
            elif leaf.kind == "grounded_skill":
                row["context"] = seed.context or ""
            meta = {
                "leaf": leaf.name,
                "kind": leaf.kind,
                "source": "seed",
                "seed_example": seed.index,
                "qna": i,
            }
            knowledge_context = context_variant and leaf.kind == "knowledge" and bool(seed.context)
            out += sample_records(row, meta, system_prompt, context_variant=knowledge_context)
    return out


def replay(phase1: Sequence[Record], fraction: float, seed: int) -> list[Record]:
    """A seeded sample of phase 1 to mix into phase 2 (so skills training does not erase knowledge)."""
    if fraction <= 0 or not phase1:
        return []
    k = min(len(phase1), max(1, round(len(phase1) * fraction)))
    rng = random.Random(stable_int(f"{seed}/replay"))
    picked = sorted(rng.sample(range(len(phase1)), k))
    return [{**phase1[i], "metadata": {**phase1[i]["metadata"], "replay": True}} for i in picked]


def shuffled(records: Sequence[Record], seed: int, name: str) -> list[Record]:
    out = list(records)
    random.Random(stable_int(f"{seed}/{name}")).shuffle(out)
    return out
