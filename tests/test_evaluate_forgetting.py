"""Forgetting check: perplexity math against a plain forward pass, windows, flagging, the shipped set."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from labalign.errors import LabalignError
from labalign.evaluate import forgetting
from labalign.evaluate.forgetting import Document
from tests.tiny_models import tiny_llama_dir

DOCS = [
    Document("a", "news", "Short", "The ferry left the harbour at noon."),
    Document("b", "how-to", "Medium", "Water the plant a day before repotting it. " * 6),
    # Longer than the tiny model's 256 positions in byte-level tokens: scored in several windows.
    Document("c", "news", "Long", "Councillors approved the extra funding after a short debate. " * 12),
]


def _manual(model_dir: Path, window: int) -> tuple[list[float], list[int]]:
    """Unbatched, unpadded, full-logits reference: every token after the first, windowed the same way."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    nll, counts = [], []
    for doc in DOCS:
        ids = tok(doc.text)["input_ids"]
        total, n = 0.0, 0
        start = 0
        while start < len(ids) - 1:
            piece = torch.tensor([ids[start : start + window]])
            with torch.no_grad():
                logits = model(input_ids=piece).logits[0, :-1]
            total += float(torch.nn.functional.cross_entropy(logits, piece[0, 1:], reduction="sum"))
            n += piece.shape[1] - 1
            start += window - 1
        nll.append(total)
        counts.append(n)
    return nll, counts


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("forgetting")
    base = tiny_llama_dir(root / "base")
    tuned = tiny_llama_dir(root / "tuned")
    model = AutoModelForCausalLM.from_pretrained(tuned, dtype=torch.float32)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a damaged head: confident and wrong, so perplexity must rise
        model.lm_head.weight.add_(torch.randn(model.lm_head.weight.shape, generator=gen) * 2.0)
    model.save_pretrained(tuned)
    return base, tuned


def test_windows_predict_every_token_once() -> None:
    for length in (1, 2, 5, 9, 10, 11, 40):
        ids = list(range(length))
        parts = forgetting.windows(ids, 5)
        predicted = [t for w in parts for t in w[1:]]
        assert predicted == ids[1:] and all(len(w) <= 5 for w in parts)


def test_perplexity_matches_manual_forward_pass(models: tuple[Path, Path]) -> None:
    base, _ = models
    seen: list[tuple[str, int, int]] = []
    result = forgetting.score(
        base,
        DOCS,
        window=64,
        batch_size=2,
        on_progress=lambda p, d, t: seen.append((p, d, t)),
        dtype="float32",  # exact against the fp32 forward pass (bf16: the test below)
    )
    nll, counts = _manual(base, 64)
    assert result.tokens == counts and counts[2] > 64  # the long one was cut into windows
    assert result.nll == pytest.approx(nll, rel=1e-4)
    assert result.perplexity == pytest.approx(math.exp(sum(nll) / sum(counts)), rel=1e-4)
    assert seen[-1][1] == seen[-1][2] and seen[-1][0] == "model: perplexity"
    # The tiny model has 256 positions: a larger window is capped there, not an error.
    capped = forgetting.score(base, DOCS, window=4096, dtype="float32")
    assert capped.nll == pytest.approx(_manual(base, 256)[0], rel=1e-4)


def test_bf16_scoring_is_close_and_cached_apart(models: tuple[Path, Path], tmp_path: Path) -> None:
    base, _ = models
    fp32 = forgetting.score_cached(base, DOCS, tmp_path, window=64, dtype="float32")
    bf16 = forgetting.score_cached(base, DOCS, tmp_path, window=64, dtype="bfloat16")
    assert bf16.nll != fp32.nll  # really computed in bf16, not read from the fp32 entry
    assert bf16.perplexity == pytest.approx(fp32.perplexity, rel=0.02)
    assert len(list(tmp_path.glob("*.json"))) == 2
    again = forgetting.score_cached(base, DOCS, tmp_path, window=64, dtype="bfloat16")
    assert again.nll == bf16.nll


def test_scoring_dtype_auto_follows_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    import labalign.llm.hf as hf

    monkeypatch.setattr(hf, "pick_device", lambda requested: "cpu")
    monkeypatch.setattr(hf, "native_bf16", lambda device: True)
    assert forgetting.scoring_dtype("auto") == "bfloat16"
    monkeypatch.setattr(hf, "native_bf16", lambda device: False)
    assert forgetting.scoring_dtype("auto") == "float32"
    assert forgetting.scoring_dtype("float32") == "float32"
    with pytest.raises(LabalignError, match="unknown scoring dtype"):
        forgetting.scoring_dtype("int4")


def test_compare_flags_regressions_by_threshold(models: tuple[Path, Path], tmp_path: Path) -> None:
    base_dir, tuned_dir = models
    base = forgetting.score_cached(base_dir, DOCS, tmp_path, window=64)
    tuned = forgetting.score_cached(tuned_dir, DOCS, tmp_path, window=64)
    same = forgetting.compare(DOCS, base, base)
    assert same.ratio == 1.0 and not same.flagged and same.delta_nll_per_token.mean == 0.0
    result = forgetting.compare(DOCS, tuned, base, threshold=0.10)
    ratio = tuned.perplexity / base.perplexity
    assert result.ratio == pytest.approx(ratio) and ratio > 1.1 and result.flagged
    assert not forgetting.compare(DOCS, tuned, base, threshold=ratio - 1 + 0.01).flagged
    assert forgetting.compare(DOCS, tuned, base, threshold=ratio - 1 - 0.01).flagged
    assert set(result.styles) == {"news", "how-to"} and len(result.documents) == 3
    # Scored once: the second call reads the cache (no model load, same numbers).
    phases: list[str] = []
    again = forgetting.score_cached(
        base_dir, DOCS, tmp_path, window=64, on_progress=lambda p, d, t: phases.append(p)
    )
    assert again == base and phases == ["model: perplexity (cached)"]


def test_different_tokenizers_are_refused(models: tuple[Path, Path], tmp_path: Path) -> None:
    base = forgetting.score(models[0], DOCS[:1])
    other = forgetting.score(tiny_llama_dir(tmp_path / "other", vocab_size=300), DOCS[:1])
    with pytest.raises(LabalignError, match="tokenize the general text differently"):
        forgetting.compare(DOCS[:1], other, base)


def test_shipped_general_text() -> None:
    docs = forgetting.load_documents()
    words = sum(len(d.text.split()) for d in docs)
    assert len(docs) == 40 and 6000 <= words <= 8000
    assert len({d.id for d in docs}) == 40 and len({d.style for d in docs}) >= 5


def test_bad_general_text_file(tmp_path: Path) -> None:
    path = tmp_path / "text.jsonl"
    path.write_text('{"text": "fine"}\n{"title": "no text"}\n')
    with pytest.raises(LabalignError) as info:
        forgetting.load_documents(path)
    assert info.value.line == 2
