"""Near-duplicate removal: the MinHash LSH index against the exact ROUGE-L one, the `auto` switch, and
the `sdg.dedup` setting reaching the dedup blocks and the across-rounds index."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labalign.config import load_settings
from labalign.errors import ConfigError
from labalign.sdg.blocks import BlockContext, DedupBlockConfig, run_block
from labalign.sdg.dedup import (
    AUTO_MINHASH_MIN_TEXTS,
    MinHashIndex,
    NearDuplicateIndex,
    NearDuplicates,
    jaccard_bound,
    lsh_bands,
    near_duplicate_index,
    resolve_method,
)
from labalign.sdg.driver import options_from_settings
from labalign.sdg.generate import GenerateOptions, generate
from labalign.sdg.prompts import PromptLibrary
from labalign.sdg.stats import LeafStats
from labalign.settings.sdg import SDGSettings
from labalign.textmetrics import rouge_l, tokens
from tests.sdg_fakes import ScriptedTeacher
from tests.test_sdg_generate import jobs

VOCAB = [f"w{i}" for i in range(800)]


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def edited(rng: random.Random, text: str, edits: int) -> str:
    words = text.split()
    for _ in range(edits):
        at = rng.randrange(len(words))
        if rng.random() < 0.5:
            words[at] = rng.choice(VOCAB)
        else:
            words.insert(at, rng.choice(VOCAB))
    return " ".join(words)


def decisions(index: NearDuplicates, texts: list[str]) -> list[int | None]:
    """The greedy keep-if-no-near-copy loop: per text, the kept position it copies (None: kept)."""
    out: list[int | None] = []
    for text in texts:
        match = index.find(text)
        if match is None:
            index.add(text)
        out.append(match)
    return out


def test_minhash_catches_near_duplicates_and_keeps_distinct_texts() -> None:
    rng = random.Random(7)
    originals = [sentence(rng, rng.randint(12, 24)) for _ in range(150)]
    index = MinHashIndex(0.7)
    assert decisions(index, originals) == [None] * 150  # distinct texts are all kept
    caught = 0
    for i, text in enumerate(originals):
        copy = edited(rng, text, 1)
        assert rouge_l(tokens(copy), tokens(text)) >= 0.7
        caught += index.find(copy) == i
    assert caught == 150
    # A text sharing only a few words with a kept one is not a near-duplicate.
    far = " ".join(originals[0].split()[:4] + sentence(rng, 16).split())
    assert index.find(far) is None
    assert len(index) == 150


def test_minhash_agrees_with_rouge_on_a_small_mixed_set() -> None:
    rng = random.Random(3)
    texts: list[str] = []
    for _ in range(400):
        if texts and rng.random() < 0.35:  # copies with 1-6 edits: both sides of the threshold
            texts.append(edited(rng, rng.choice(texts), rng.randint(1, 6)))
        else:
            texts.append(sentence(rng, rng.randint(10, 22)))
    exact = decisions(NearDuplicateIndex(0.7), texts)
    approx = decisions(MinHashIndex(0.7), texts)
    dropped = sum(d is not None for d in exact)
    assert 40 < dropped < 140  # the set really has near-duplicates to find, and not only those
    # The LSH may miss a pair no band catches (then kept positions shift by one): keep/drop decisions
    # agree on all but a few texts, and every text MinHash drops copies one it kept (ROUGE-L checked).
    differ = [i for i, (e, a) in enumerate(zip(exact, approx, strict=True)) if (e is None) != (a is None)]
    assert len(differ) <= 4, differ
    kept = [t for t, a in zip(texts, approx, strict=True) if a is None]
    for text, match in zip(texts, approx, strict=True):
        if match is not None:
            assert rouge_l(tokens(text), tokens(kept[match])) >= 0.7


def test_minhash_is_deterministic_and_seeded() -> None:
    rng = random.Random(11)
    texts = [sentence(rng, 14) for _ in range(60)]
    texts += [edited(rng, t, 2) for t in texts[:30]]
    runs = [decisions(MinHashIndex(0.7, seed=5), texts) for _ in range(2)]
    assert runs[0] == runs[1]
    a, b = MinHashIndex(0.7, seed=5), MinHashIndex(0.7, seed=6)
    a.add(texts[0])
    b.add(texts[0])
    sketch_a, sketch_b = a._last, b._last  # the seed picks the permutations
    assert sketch_a is not None and sketch_b is not None
    assert list(sketch_a[2].hashvalues) != list(sketch_b[2].hashvalues)  # type: ignore[attr-defined]


def test_texts_without_tokens_never_match() -> None:
    for index in (MinHashIndex(0.7), NearDuplicateIndex(0.7)):
        index.add("?!")
        index.add("a real sentence here")
        assert index.find("...") is None
        assert index.find("a real sentence here!") == 1


@settings(max_examples=200, deadline=None)
@given(
    a=st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=14),
    b=st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=14),
)
def test_rouge_threshold_bounds_multiset_jaccard(a: list[str], b: list[str]) -> None:
    """What makes the LSH safe: ROUGE-L F1 >= t implies token multiset Jaccard >= t/(2-t)."""
    ca, cb = Counter(a), Counter(b)
    jaccard = sum((ca & cb).values()) / sum((ca | cb).values())
    f1 = rouge_l(a, b)
    for t in (0.5, 0.7, 0.9):
        if f1 >= t:
            assert jaccard >= jaccard_bound(t) - 1e-12


def test_bands_catch_the_bound_with_the_longest_bands() -> None:
    bands, rows = lsh_bands(0.7)
    assert (bands, rows) == (32, 4)
    bound = jaccard_bound(0.7)
    assert 1 - (1 - bound**rows) ** bands >= 0.9
    longer = rows + 1
    assert 1 - (1 - bound**longer) ** (128 // longer) < 0.9


def test_auto_switches_to_minhash_for_large_sets() -> None:
    assert resolve_method("auto", AUTO_MINHASH_MIN_TEXTS - 1) == "rouge"
    assert resolve_method("auto", AUTO_MINHASH_MIN_TEXTS) == "minhash"
    assert resolve_method("rouge", 10**6) == "rouge"
    assert isinstance(near_duplicate_index(0.7, "auto", expected_texts=10), NearDuplicateIndex)
    assert isinstance(near_duplicate_index(0.7, "auto", expected_texts=5000), MinHashIndex)
    assert isinstance(near_duplicate_index(0.7, "minhash"), MinHashIndex)
    # The setting's help states the switch-over size: it must be this one.
    assert f"minhash from {AUTO_MINHASH_MIN_TEXTS} samples" in str(
        SDGSettings.model_fields["dedup"].description
    )


def block_ctx(dedup: str) -> BlockContext:
    teacher = ScriptedTeacher()
    return BlockContext(
        leaf="l",
        teacher=teacher,
        judge=teacher,
        prompts=PromptLibrary(),
        stats=LeafStats("l"),
        seed=1,
        chat=False,
        seed_texts={"question": ["How do tides work near the harbour at night?"]},
        dedup=dedup,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("block_method", "setting"), [("minhash", "rouge"), (None, "minhash"), ("rouge", "auto")]
)
def test_dedup_block_counts_the_same_drops_with_either_method(block_method: str | None, setting: str) -> None:
    rng = random.Random(5)
    questions = [sentence(rng, 15) for _ in range(20)]
    rows = [{"_id": f"r{i}", "question": q} for i, q in enumerate(questions)]
    rows += [{"_id": f"d{i}", "question": edited(rng, q, 1)} for i, q in enumerate(questions[:5])]
    rows.append({"_id": "s", "question": "How do tides work near the harbour at night"})
    config = DedupBlockConfig.model_validate(
        {"name": "dq", "type": "dedup", "column": "question", "method": block_method}
    )
    c = block_ctx(setting)
    out = asyncio.run(run_block(config, rows, c))
    assert [r["_id"] for r in out] == [f"r{i}" for i in range(20)]
    assert c.stats.stage("dq").dropped == {"near_duplicate": 5, "copies_seed": 1}


def test_setting_reaches_generation_and_both_methods_write_the_same_data(tmp_path: Path) -> None:
    s = load_settings(overrides={"sdg.dedup": "minhash"})
    assert options_from_settings(s).dedup == "minhash"
    with pytest.raises(ConfigError):
        load_settings(overrides={"sdg.dedup": "simhash"})
    outputs = {}
    for method in ("rouge", "minhash"):
        out = tmp_path / method
        options = GenerateOptions(samples_per_leaf=6, seed=2, dedup=method)
        asyncio.run(generate(jobs(), teacher=ScriptedTeacher(bad_every=4), out_dir=out, options=options))
        outputs[method] = [
            (out / name).read_bytes() for name in ("phase1.jsonl", "phase2.jsonl", "heldout.jsonl")
        ]
    assert outputs["rouge"] == outputs["minhash"]
