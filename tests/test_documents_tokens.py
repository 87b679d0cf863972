"""Token counting: the documented estimate, and real tokenizers built in the test."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from labalign.documents import DocumentError, chunk_markdown, estimate_tokens, token_counter

SENTENCES = [
    "the island has a small harbor",
    "the fleet has forty boats",
    "tourists come in summer to the island",
    "cod and herring are caught all year",
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        ("the cat", 2),  # short words: one each, single spaces free
        ("internationalization", 5),  # 20 letters: ceil(20 / 4)
        ("1984", 4),  # digits one each
        ("in 1984", 6),  # and the space before a number is a token of its own
        ("a, b.", 4),  # punctuation one each
        ("naïve", 4),  # "na" + "ï" (2) + "ve"
        ("日本", 4),  # non-ASCII: 2 each
        ("a\nb", 3),  # newline counts
        ("a        b", 4),  # 8 spaces: ceil(8 / 4)
        ("snake_case", 4),
    ],
)
def test_estimate_rules(text: str, expected: int) -> None:
    assert estimate_tokens(text) == expected


def test_estimate_is_monotone_under_appending() -> None:
    text = "Vellmoor  Island, 1984: naïve\tcafé — über ümlaut\n\n  code_block()  "
    counts = [estimate_tokens(text[:i]) for i in range(len(text) + 1)]
    assert counts == sorted(counts)


def test_no_tokenizer_means_the_estimate() -> None:
    assert token_counter(None) is estimate_tokens


def _train(path: Path) -> Path:
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="[BOS] $A", special_tokens=[("[BOS]", 1)]
    )
    trainer = tokenizers.trainers.WordLevelTrainer(special_tokens=["[UNK]", "[BOS]"])
    tok.train_from_iterator(SENTENCES, trainer=trainer)
    path.mkdir(parents=True, exist_ok=True)
    out = path / "tokenizer.json"
    tok.save(str(out))
    return out


def test_tokenizer_json_file_and_folder(tmp_path: Path) -> None:
    json_file = _train(tmp_path / "model")
    for target in (json_file, json_file.parent, str(json_file)):
        count = token_counter(target)
        assert count("the island has forty boats") == 5  # no [BOS]: special tokens are not counted
        assert count("unknown words here") == 3  # each maps to [UNK]
        assert count("") == 0


def test_chunks_counted_with_a_real_tokenizer(tmp_path: Path) -> None:
    count = token_counter(_train(tmp_path / "model"))
    text = "# Island\n\n" + " ".join(SENTENCES * 6) + "\n\n## Fleet\n\n" + "\n".join(SENTENCES) + "\n"
    chunks = chunk_markdown(text, source="d.md", max_tokens=25, count_tokens=count)
    assert len(chunks) > 3
    assert all(c.n_tokens == count(c.text) <= 25 for c in chunks)


def test_tokenizer_path_missing(tmp_path: Path) -> None:
    with pytest.raises(DocumentError, match=r"tokenizer not found") as info:
        token_counter(tmp_path / "nope.json")
    assert info.value.hint and "tokenizer.json" in info.value.hint


def test_tokenizer_file_unreadable(tmp_path: Path) -> None:
    pytest.importorskip("tokenizers")
    bad = tmp_path / "tokenizer.json"
    bad.write_text(json.dumps({"not": "a tokenizer"}))
    with pytest.raises(DocumentError, match=r"cannot load tokenizer"):
        token_counter(bad)


def test_without_tokenizer_libraries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    monkeypatch.setitem(sys.modules, "transformers", None)
    json_file = tmp_path / "tokenizer.json"
    json_file.write_text("{}")
    with pytest.raises(DocumentError, match=r"needs the `tokenizers` package") as info:
        token_counter(json_file)
    assert info.value.hint and "pip install tokenizers" in info.value.hint
    folder = tmp_path / "model"
    folder.mkdir()
    with pytest.raises(DocumentError, match=r"no tokenizer.json"):
        token_counter(folder)
