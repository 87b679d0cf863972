"""Self-synthesized rehearsal: the student's own passages, written once, trained as plain text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labalign.errors import LabalignError
from labalign.train import rehearsal
from labalign.train.data import read_samples
from tests.tiny_models import tiny_llama_dir


@pytest.mark.parametrize(
    ("text", "finished", "expected"),
    [
        ("The tide came in. Boats rose with it. Then the", False, "The tide came in. Boats rose with it."),
        ('He said "go home." And she', False, 'He said "go home."'),
        ("A list\nof lines and half", False, "A list"),
        ("no sentence end at all", False, ""),
        ("  The model ended here without a stop  ", True, "The model ended here without a stop"),
    ],
)
def test_passage_ends_at_a_sentence_unless_the_model_ended_it(
    text: str, finished: bool, expected: str
) -> None:
    assert rehearsal.passage(text, finished) == expected


def _keep_all(monkeypatch: pytest.MonkeyPatch) -> None:
    # A random tiny model writes no sentences; the cut is tested above.
    monkeypatch.setattr(rehearsal, "passage", lambda text, finished: text.strip())
    monkeypatch.setattr(rehearsal, "MIN_WORDS", 1)


def test_synthesize_writes_seeded_pretraining_records_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _keep_all(monkeypatch)
    model = tiny_llama_dir(tmp_path / "model")
    seen: list[tuple[int, int]] = []
    path = rehearsal.synthesize(
        model,
        tmp_path / "a",
        samples=5,
        max_tokens=12,
        seed=3,
        on_progress=lambda _, d, t: seen.append((d, t)),
    )
    samples = read_samples(path)
    assert samples and all(s.is_pretraining for s in samples)
    assert seen[-1] == (5, 5)
    # The same passages whatever the batch size (each is seeded by its index), and another seed differs.
    again = rehearsal.synthesize(model, tmp_path / "b", samples=5, max_tokens=12, seed=3, batch_size=2)
    assert again.read_text() == path.read_text()
    other = rehearsal.synthesize(model, tmp_path / "c", samples=5, max_tokens=12, seed=4)
    assert other.read_text() != path.read_text()
    # Written once: a second call with the same settings does not load the model.
    monkeypatch.setattr("labalign.llm.hf.TransformersBackend", None)
    assert rehearsal.synthesize(model, tmp_path / "a", samples=5, max_tokens=12, seed=3) == path
    with pytest.raises(TypeError):  # other settings: written again (here: the poisoned backend is called)
        rehearsal.synthesize(model, tmp_path / "a", samples=6, max_tokens=12, seed=3)
    assert json.loads(path.read_text().splitlines()[0])["metadata"]["variant"] == "rehearsal"


def test_a_killed_synthesis_resumes_from_its_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _keep_all(monkeypatch)
    model = tiny_llama_dir(tmp_path / "model")
    path = rehearsal.synthesize(model, tmp_path / "a", samples=4, max_tokens=10, seed=1)
    written = path.read_text()
    path.unlink()  # killed after the passages were written, before the file was

    async def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("every passage should come from the cache")

    monkeypatch.setattr("labalign.llm.hf.TransformersBackend.generate", no_model)
    assert (
        rehearsal.synthesize(model, tmp_path / "a", samples=4, max_tokens=10, seed=1).read_text() == written
    )


def test_no_usable_passage_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rehearsal, "passage", lambda text, finished: "")
    with pytest.raises(LabalignError, match="rehearsal samples had") as info:
        rehearsal.synthesize(
            tiny_llama_dir(tmp_path / "model"), tmp_path / "out", samples=2, max_tokens=8, seed=0
        )
    assert "rehearsal_samples" in (info.value.hint or "")
    assert not (tmp_path / "out" / rehearsal.FILE).exists()
