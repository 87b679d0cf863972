"""Reading messages JSONL, chat-template tokenization with loss masks, long samples, and the cache."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from labalign.errors import LabalignError
from labalign.llm.chat_template import DEFAULT_CHAT_TEMPLATE
from labalign.train import tokenize as tok_mod
from labalign.train.data import Sample, read_samples
from labalign.train.tokenize import load_tokenized, tokenize_samples
from tests.test_train_helpers import make_records, tiny_tokenizer, write_jsonl

# Gemma's layout without {% generation %} markers: trained spans must come from incremental rendering.
GEMMA_LIKE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] + '\n\n' }}"
    "{% else %}{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else 'user') + '\n' "
    "+ m['content'] | trim + '<end_of_turn>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
# Re-renders earlier turns once a later one exists: turn boundaries cannot be found by prefixes.
NOT_INCREMENTAL = (
    "{% for m in messages %}{% if loop.last %}{{ m['role'] + ': ' + m['content'] + '\n' }}"
    "{% else %}{{ m['role'][0] + '> ' + m['content'] + '\n' }}{% endif %}{% endfor %}"
)


def _sample(messages: list[tuple[str, str]], unmask: bool = False) -> Sample:
    return Sample(id="x", messages=tuple(messages), unmask=unmask, path="data.jsonl", line=1)


def _trained_text(tokenizer: object, sample: Sample) -> str:
    data = tokenize_samples([sample], tokenizer, max_seq_len=4096, long_samples="drop")
    ids, mask = data.sample(0)
    return tokenizer.decode([int(i) for i in ids[mask]])  # type: ignore[attr-defined, no-any-return]


CHAT = [
    ("system", "be brief"),
    ("user", "what is the capital"),
    ("assistant", "quenta"),
    ("user", "and the river"),
    ("assistant", "the north river"),
]


def test_default_template_trains_assistant_turns_and_their_end_marker() -> None:
    tokenizer = tiny_tokenizer(DEFAULT_CHAT_TEMPLATE)
    assert _trained_text(tokenizer, _sample(CHAT)) == "quenta<|end|>the north river<|end|>"


def test_mask_matches_transformers_generation_markers() -> None:
    tokenizer = tiny_tokenizer(DEFAULT_CHAT_TEMPLATE)
    for record in make_records(20, seed=3):
        if record["unmask"]:
            continue
        sample = _sample([(m["role"], m["content"]) for m in record["messages"]])
        data = tokenize_samples([sample], tokenizer, max_seq_len=4096, long_samples="drop")
        expected = tokenizer.apply_chat_template(
            sample.as_chat(), tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids, mask = data.sample(0)
        assert ids.tolist() == expected["input_ids"]
        assert mask.astype(int).tolist() == expected["assistant_masks"]


def test_unmask_trains_user_turns_but_never_the_system_prompt() -> None:
    tokenizer = tiny_tokenizer(DEFAULT_CHAT_TEMPLATE)
    text = _trained_text(tokenizer, _sample(CHAT, unmask=True))
    assert text == "what is the capital<|end|>quenta<|end|>and the river<|end|>the north river<|end|>"
    assert "brief" not in text


def test_pretraining_records_train_every_token_as_plain_text(tmp_path: Path) -> None:
    tokenizer = tiny_tokenizer(DEFAULT_CHAT_TEMPLATE)
    path = tmp_path / "text.jsonl"
    path.write_text(
        '{"messages": [{"role": "pretraining", "content": "the north river runs"}]}\n'
        + json.dumps(make_records(1)[0])
        + "\n"
    )
    samples = read_samples(path)
    assert [s.is_pretraining for s in samples] == [True, False]
    data = tokenize_samples(samples, tokenizer, max_seq_len=4096, long_samples="drop")
    ids, mask = data.sample(0)
    expected = [
        *tokenizer("the north river runs", add_special_tokens=True)["input_ids"],
        tokenizer.eos_token_id,
    ]
    assert ids.tolist() == expected and mask.all()  # no chat template, no masked token
    _, chat_mask = data.sample(1)
    assert not chat_mask.all()  # the chat record beside it keeps its prompt masked


def test_template_without_generation_markers() -> None:
    tokenizer = tiny_tokenizer(GEMMA_LIKE)
    text = _trained_text(tokenizer, _sample(CHAT))
    assert text == "quenta<end_of_turn>the north river<end_of_turn>"
    unmasked = _trained_text(tokenizer, _sample(CHAT, unmask=True))
    assert unmasked.startswith("what is the capital<end_of_turn>") and "brief" not in unmasked


def test_template_that_rerenders_turns_is_refused_with_the_sample_named() -> None:
    tokenizer = tiny_tokenizer(NOT_INCREMENTAL)
    with pytest.raises(LabalignError) as info:
        tokenize_samples([_sample(CHAT)], tokenizer, max_seq_len=4096, long_samples="drop")
    assert (
        info.value.path == "data.jsonl" and info.value.line == 1 and "generation" in (info.value.hint or "")
    )


def test_long_samples_are_dropped_or_truncated_and_counted() -> None:
    tokenizer = tiny_tokenizer(DEFAULT_CHAT_TEMPLATE)
    short = _sample([("user", "hi"), ("assistant", "quenta")])
    long = _sample([("user", "tell me about the island " * 20), ("assistant", "the capital is quenta")])
    dropped = tokenize_samples([short, long], tokenizer, max_seq_len=40, long_samples="drop")
    assert len(dropped) == 1 and dropped.stats.dropped_long == 1 and dropped.stats.kept == 1
    # Truncated inside the user turn: nothing left to learn, so it is dropped (and counted as such).
    cut = tokenize_samples([short, long], tokenizer, max_seq_len=40, long_samples="truncate")
    assert cut.stats.truncated == 1 and cut.stats.dropped_unsupervised == 1 and len(cut) == 1
    answer_long = _sample([("user", "hi"), ("assistant", "quenta river " * 30)])
    kept = tokenize_samples([answer_long], tokenizer, max_seq_len=40, long_samples="truncate")
    assert len(kept) == 1 and kept.lengths().tolist() == [40] and kept.stats.truncated == 1


def test_empty_dataset_after_filtering_names_the_file(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p1.jsonl", make_records(3, min_words=30, max_words=40))
    with pytest.raises(LabalignError) as info:
        load_tokenized(
            path, tiny_tokenizer(DEFAULT_CHAT_TEMPLATE), max_seq_len=16, long_samples="drop", cache_dir=None
        )
    assert info.value.path == str(path) and "--max-seq-len" in (info.value.hint or "")


def test_cache_hit_and_invalidation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_jsonl(tmp_path / "p1.jsonl", make_records(10))
    tokenizer = tiny_tokenizer(DEFAULT_CHAT_TEMPLATE)
    kwargs = dict(max_seq_len=512, long_samples="drop", cache_dir=tmp_path / "cache")
    first = load_tokenized(path, tokenizer, **kwargs)  # type: ignore[arg-type]
    calls: list[int] = []
    real = tok_mod.tokenize_samples

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tok_mod, "tokenize_samples", counting)
    again = load_tokenized(path, tokenizer, **kwargs)  # type: ignore[arg-type]
    assert calls == [] and np.array_equal(first.input_ids, again.input_ids) and first.keys == again.keys
    assert np.array_equal(first.supervised, again.supervised) and first.stats == again.stats
    load_tokenized(path, tokenizer, **{**kwargs, "max_seq_len": 256})  # type: ignore[arg-type]
    assert calls == [1]  # settings are part of the key
    tokenizer.chat_template = GEMMA_LIKE
    load_tokenized(path, tokenizer, **kwargs)  # type: ignore[arg-type]
    assert calls == [1, 1]  # so is the template
    write_jsonl(path, make_records(11))
    load_tokenized(path, tokenizer, **kwargs)  # type: ignore[arg-type]
    assert calls == [1, 1, 1]  # and the data


@pytest.mark.parametrize(
    ("content", "line", "needle"),
    [
        (
            '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n'
            "{oops\n",
            2,
            "not valid JSON",
        ),
        ('{"messages": [{"role": "user", "content": "only a question"}]}\n', 1, "no assistant turn"),
        ('\n\n{"messages": [{"role": "robot", "content": "x"}]}\n', 3, "role must be one of"),
        ('{"messages": [{"role": "user", "content": 3}]}\n', 1, "content must be a string"),
        ("[1, 2]\n", 1, "expected a JSON object"),
        (
            '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], '
            '"unmask": "yes"}\n',
            1,
            "unmask",
        ),
        ('{"messages": []}\n', 1, "non-empty list"),
        ('{"messages": [{"role": "pretraining", "content": "  "}]}\n', 1, "one message with non-empty text"),
        (
            '{"messages": [{"role": "pretraining", "content": "a"}, {"role": "user", "content": "b"}]}\n',
            1,
            "one message with non-empty text",
        ),
        (
            '{"messages": [{"role": "user", "content": "q"}, {"role": "pretraining", "content": "t"}]}\n',
            1,
            "lone",
        ),
    ],
)
def test_bad_records_name_file_and_line(tmp_path: Path, content: str, line: int, needle: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(LabalignError) as info:
        read_samples(path)
    assert info.value.path == str(path) and info.value.line == line and needle in info.value.message
    assert info.value.hint


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(LabalignError, match="not found") as info:
        read_samples(tmp_path / "nope.jsonl", flag="--phase1")
    assert "--phase1" in (info.value.hint or "")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(LabalignError, match="no samples"):
        read_samples(tmp_path / "empty.jsonl")


def test_records_keep_ids_and_content_keys(tmp_path: Path) -> None:
    records = make_records(3)
    records[1].pop("id")
    path = write_jsonl(tmp_path / "d.jsonl", records)
    samples = read_samples(path)
    assert [s.id for s in samples] == ["s0", "d.jsonl:2", "s2"]
    renamed = json.loads(json.dumps(records[0]))
    renamed["id"] = "other"
    again = read_samples(write_jsonl(tmp_path / "e.jsonl", [renamed]))
    assert again[0].key == samples[0].key  # same conversation, same key, whatever the id
