"""Knowledge evaluations: MMLU-branch items from documents (and their log-likelihood scoring) and the
open-book ceiling's retrieval."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from labalign.documents import Chunk
from labalign.evaluate import mmlu_branch, open_book
from labalign.evaluate.loglik import score_continuations
from labalign.evaluate.questions import EvalQuestion
from labalign.modeling.models import load_tokenizer
from tests.tiny_models import tiny_llama_dir

DOC = [
    "The harbour at Saltmere was built in 1822 by Edric Vennard, and it held forty boats by 1850.",
    "In 1903 a storm destroyed 41 boats, and the survivors moved to Harrowgap on the north coast.",
    "The lighthouse on Gullet Head was lit in 1871 and was kept by Jonas Pellow for 38 years.",
    "A railway to Lintwick opened in 1898, carrying slate from the quarry to the pier at Dunmorrow Bay.",
    "The school at Fennick had 120 pupils in 1911, when Isobel Crane became its first headmistress.",
]


def chunk(index: int, text: str) -> Chunk:
    return Chunk(index, text, ("Quillmarrow", f"Part {index}"), "doc.md", 1 + 3 * index, 2 + 3 * index, 40)


CHUNKS = [chunk(i, text) for i, text in enumerate(DOC)]


def test_items_complete_a_document_sentence_against_facts_of_the_same_kind() -> None:
    items = mmlu_branch.build_items("knowledge/x", CHUNKS, seed=1)
    assert len(items) == len(DOC)  # one per sentence
    assert items == mmlu_branch.build_items("knowledge/x", CHUNKS, seed=1)  # deterministic
    kinds = {"year": {"1822", "1850", "1903", "1871", "1898", "1911"}}
    for item, sentence in zip(items, DOC, strict=True):
        assert item.kind == "year" and len(item.choices) == 4 and len(set(item.choices)) == 4
        right = item.choices[item.answer]
        context = item.context.split("\n\n", 1)[1]
        assert item.context.startswith("Quillmarrow > Part ")
        # The correct option restores the document's sentence; the others are other years of the document
        # that the sentence does not contain.
        assert f"{context} {right}{item.suffix}" == sentence
        for i, choice in enumerate(item.choices):
            assert choice in kinds["year"]
            assert (choice in sentence) == (i == item.answer)
    assert {item.answer for item in items} != {items[0].answer}  # the right option is not always first
    assert items[0].continuations()[items[0].answer] == f" 1822{items[0].suffix}"


def test_item_kinds_fall_back_to_numbers_counts_and_names() -> None:
    names_only = [
        "The first bishop was Aelric Manso, who came from Aldermouth with the monks.",
        "The abbey was rebuilt by Tam Keddie after the fire at Saltmere.",
        "The poet Isobel Crane lived at Brackenford until her death.",
        "In Saltmere the market was run by Fergus Aird for the council.",
    ]
    items = mmlu_branch.build_items("k", [chunk(0, " ".join(names_only))])
    assert items and {i.kind for i in items} == {"name"}
    for item in items:
        # Names are whole: no leading function word, and never the sentence's first word alone.
        assert all(c[0].isupper() and c.split()[0] not in {"In", "The"} for c in item.choices)
    sentence = "During the Hollin Winter twenty-three men and 1,400 sheep were lost in 1903."
    found = {kind: sentence[start:end] for kind, start, end in mmlu_branch._spans(sentence)}
    assert found == {"year": "1903", "number": "1,400", "count": "twenty-three", "name": "Hollin Winter"}


def test_items_need_three_distractors_and_are_capped_evenly() -> None:
    assert mmlu_branch.build_items("k", [chunk(0, DOC[0])]) == []  # one year alone: no distractors
    many = [
        chunk(i, f"The mill number {i} was built at Saltmere in {1800 + i} by the council.")
        for i in range(30)
    ]
    capped = mmlu_branch.build_items("k", many, max_items=10)
    assert len(capped) == 10 and capped[0].id.endswith("/c0/s0") and capped[-1].id.endswith("/c27/s0")


def test_compare_counts_what_tuning_put_in() -> None:
    items = mmlu_branch.build_items("knowledge/x", CHUNKS, seed=1)
    right = [[0.0 if i == item.answer else -9.0 for i in range(4)] for item in items]
    wrong = [[-9.0 if i == item.answer else 0.0 for i in range(4)] for item in items]
    result = mmlu_branch.compare(items, ("tuned", right), ("base", wrong))
    assert result.tuned == 1.0 and result.base == 0.0 and result.delta == 1.0
    assert result.gained == len(items) and result.leaves["knowledge/x"].n == len(items)
    assert result.items[0].tuned_pick == items[0].answer != result.items[0].base_pick


def test_continuation_loglik_matches_a_full_forward_pass(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model_dir = tiny_llama_dir(tmp_path / "m")
    items = [("The harbour was built in", [" 1822 by the council.", " 1903."]), ("Hello", [" world"])]
    identity, loglik = score_continuations(model_dir, items, batch_size=2, dtype="float32")
    assert identity.startswith("hf:") and [len(x) for x in loglik] == [2, 1]
    tokenizer = load_tokenizer(model_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.eval()
    for (context, continuations), lls in zip(items, loglik, strict=True):
        ctx = tokenizer(context)["input_ids"]
        for continuation, ll in zip(continuations, lls, strict=True):
            cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                lsm = torch.log_softmax(model(input_ids=torch.tensor([ctx + cont])).logits[0].double(), -1)
            assert ll == pytest.approx(
                sum(float(lsm[len(ctx) - 1 + i, t]) for i, t in enumerate(cont)), abs=2e-3
            )


@pytest.mark.parametrize("arch", ["gemma3", "llama"])
def test_continuations_sharing_their_context_score_as_whole_rows_would(arch: str) -> None:
    """The context runs once and its continuations go on from its (repeated) KV cache; contexts and
    continuations of different lengths are padded. Gemma 3's sliding window (4) is shorter than the
    rows, so both kinds of cache layer are repeated and attended through."""
    from labalign.evaluate.loglik import _score_batch
    from labalign.modeling.loss import head_spec
    from tests.test_train_helpers import tiny_model

    overrides: dict[str, Any] = {"sliding_window": 4} if arch == "gemma3" else {}
    model = tiny_model(arch, vocab_size=97, **overrides).double().eval()
    contexts = [[1, 5, 9, 11, 3, 7, 8, 40, 41], [1, 8], [1, 4, 4, 6, 50, 60]]
    continuations = [[[12, 13, 14], [15]], [[16, 17, 18, 19, 20, 21, 22], [], [23, 24]], [[25, 26]]]
    with torch.no_grad():
        scores = _score_batch(model, head_spec(model), contexts, continuations)
        for ctx, conts, row in zip(contexts, continuations, scores, strict=True):
            assert len(row) == len(conts)
            for cont, ll in zip(conts, row, strict=True):
                if not cont:
                    assert ll == 0.0
                    continue
                lsm = torch.log_softmax(model(input_ids=torch.tensor([ctx + cont])).logits[0], -1)
                expected = sum(float(lsm[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))
                assert ll == pytest.approx(expected, abs=1e-5)  # the softmax runs in fp32


def question(text: str, reference: str, leaf: str = "knowledge/x") -> EvalQuestion:
    return EvalQuestion(leaf, "knowledge", "heldout", text, reference)


def test_retrieval_finds_the_chunk_with_the_answer() -> None:
    retriever = open_book.Retriever(CHUNKS)
    assert retriever.top("Who kept the lighthouse on Gullet Head?", 1)[0].chunk.index == 2
    assert retriever.top("When did the railway to Lintwick open?", 2)[0].chunk.index == 3
    assert len(retriever.top("what is it?", 2)) == 2  # stopwords only: still k chunks
    found = open_book.retrieve(
        [
            question("Who kept the lighthouse on Gullet Head?", "Jonas Pellow kept it for 38 years."),
            question("How many pupils did the school have?", "The school at Fennick had 120 pupils."),
            question("Anything else?", "no", leaf="knowledge/without-documents"),
        ],
        {"knowledge/x": CHUNKS},
        k=2,
    )
    assert len(found) == 2 and all(r.recall for r in found)
    prompt = found[0].prompt()
    assert prompt.startswith(CHUNKS[2].text) and prompt.endswith(
        "\n\nWho kept the lighthouse on Gullet Head?"
    )


def test_passages_are_the_prose_paragraphs() -> None:
    text = "# Title\n\nFirst paragraph about the harbour.\n\n| a | b |\n\nSecond one, about the mill."
    found = open_book.passages([chunk(0, text), chunk(1, "| only | a table |")])
    assert [p.text for p in found] == [
        "First paragraph about the harbour.",
        "Second one, about the mill.",
        "| only | a table |",
    ]
    assert [p.where for p in found] == ["doc.md:1-2#1", "doc.md:1-2#2", "doc.md:4-5#1"]


def test_report_sets_every_setting_side_by_side() -> None:
    found = open_book.retrieve(
        [question("Who kept the lighthouse on Gullet Head?", "Jonas Pellow kept the lighthouse.")],
        {"knowledge/x": CHUNKS},
    )
    answers = {
        "base_closed": ["I do not know."],
        "tuned_closed": ["Jonas Pellow kept it."],
        "base_open": ["Jonas Pellow kept the lighthouse."],
        "tuned_open": ["Jonas Pellow kept the lighthouse."],
    }
    result = open_book.report(found, answers, k=2)
    assert result.f1 == result.base_open == 1.0 and result.base_closed == 0.0
    assert result.tuned_closed is not None and 0 < result.tuned_closed < 1 and result.retrieval_recall == 1.0
    assert result.leaves["knowledge/x"].n == 1
    assert result.questions[0].passages[0] == "doc.md:7-8#1"


def test_continuation_scores_are_cached_per_model(tmp_path: Path) -> None:
    import json

    from labalign.evaluate.loglik import score_continuations_cached

    model_dir = tiny_llama_dir(tmp_path / "m")
    items = [("The harbour was built in", [" 1822.", " 1903."])]
    first = score_continuations_cached(model_dir, items, tmp_path / "cache")
    (cached,) = (tmp_path / "cache").glob("*.json")
    data = json.loads(cached.read_text())
    data["loglik"][0][0] = 123.0
    cached.write_text(json.dumps(data))
    again = score_continuations_cached(model_dir, items, tmp_path / "cache")
    assert again[0] == first[0] and again[1] == [[123.0, first[1][0][1]]]
    other = score_continuations_cached(model_dir, [("Other", [" text"])], tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.json"))) == 2 and other[1][0][0] < 0
