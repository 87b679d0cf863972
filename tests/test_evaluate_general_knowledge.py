"""General-knowledge check: option log-likelihoods, picks per byte, the paired comparison, the data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from labalign.errors import LabalignError
from labalign.evaluate import general_knowledge as gk
from labalign.evaluate.forgetting import load_documents
from labalign.modeling.models import load_tokenizer
from tests.tiny_models import tiny_llama_dir

QUESTIONS = [
    gk.Question("q1", "geo", "What is the capital of France?", ("Paris", "Rome", "a big city", "Oslo"), 0),
    gk.Question("q2", "sci", "How many legs does a spider have?", ("eight", "six", "four", "ten"), 0),
    gk.Question("q3", "sci", "Which planet is red?", ("Mars", "Venus", "Saturn", "Earth"), 0),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama_dir(tmp_path_factory.mktemp("gk") / "m")


def test_option_loglik_matches_a_full_forward_pass(model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    scores = gk.score(model_dir, QUESTIONS, batch_size=5, dtype="float32")
    tokenizer = load_tokenizer(model_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.eval()
    for q, lls in zip(QUESTIONS, scores.loglik, strict=True):
        context = tokenizer(gk.PROMPT.format(question=q.question))["input_ids"]
        for choice, ll in zip(q.choices, lls, strict=True):
            option = tokenizer(" " + choice, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([context + option])
            with torch.no_grad():
                lsm = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
            expected = sum(float(lsm[len(context) - 1 + i, t]) for i, t in enumerate(option))
            assert ll == pytest.approx(expected, abs=2e-3)


def test_picks_normalise_by_bytes() -> None:
    q = gk.Question("x", "", "?", ("ab", "abcdefgh"), 1)
    # "ab" has the higher total but the lower per-byte log-likelihood.
    scores = gk.Scores("m", [[-3.0, -6.0]])
    assert scores.picks([q]) == [1] and scores.correct([q]) == [1.0]


def test_compare_pairs_questions_and_flags_a_lost_interval() -> None:
    qs = [gk.Question(f"q{i}", "s", "?", ("a", "b"), 0) for i in range(40)]
    right, wrong = [0.0, -5.0], [-5.0, 0.0]
    base = gk.Scores("base", [right] * 40)
    same = gk.compare(qs, gk.Scores("t", [right] * 40), base)
    assert same.base == same.tuned == 1.0 and same.delta == 0.0 and not same.regression
    worse = gk.compare(qs, gk.Scores("t", [wrong] * 20 + [right] * 20), base)
    assert worse.delta == pytest.approx(-0.5) and worse.ci_high < 0 and worse.regression
    assert worse.lost == 20 and worse.gained == 0 and worse.n == 40
    assert worse.questions[0].model_dump() == {"id": "q0", "answer": 0, "base": 0, "tuned": 1}


def test_scores_are_cached_per_model(model_dir: Path, tmp_path: Path) -> None:
    first = gk.score_cached(model_dir, QUESTIONS, tmp_path)
    (cached,) = tmp_path.glob("*.json")
    data = json.loads(cached.read_text())
    data["loglik"][0][0] = 123.0
    cached.write_text(json.dumps(data))
    again = gk.score_cached(model_dir, QUESTIONS, tmp_path)
    assert again.loglik[0][0] == 123.0 and again.loglik[1:] == first.loglik[1:]


def test_shipped_questions() -> None:
    questions = gk.load_questions()
    assert len(questions) >= 200 and len({q.id for q in questions}) == len(questions)
    assert len({q.question for q in questions}) == len(questions)
    assert all(len(q.choices) == 4 and len(set(q.choices)) == 4 for q in questions)
    assert {q.answer for q in questions} == {0, 1, 2, 3}
    assert len({q.subject for q in questions}) >= 8
    text = " ".join(d.text for d in load_documents()).lower()
    assert not any(q.question.lower() in text for q in questions)
    assert not any("quillmarrow" in q.question.lower() for q in questions)


def test_bad_question_file_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    good = '{"question": "?", "choices": ["a", "b"], "answer": 1}'
    path.write_text(good + '\n{"question": "?", "choices": ["a"], "answer": 0}\n')
    with pytest.raises(LabalignError) as err:
        gk.load_questions(path)
    assert err.value.line == 2
