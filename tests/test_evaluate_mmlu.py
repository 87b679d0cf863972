"""MMLU wiring: a tiny multiple-choice task in lm-eval's own YAML format, on a tiny random model,
through the same code path as MMLU (offline, cached, with progress)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from labalign.cli import app
from labalign.errors import LabalignError
from labalign.evaluate import mmlu
from labalign.evaluate.unavailable import EvalUnavailable
from labalign.settings.llm import LLMSettings
from tests.tiny_models import tiny_llama_dir

ITEMS: list[dict[str, Any]] = [
    {
        "question": f"Which number follows {i}?",
        "choices": [str(i + 1), str(i + 2), "cat", "blue"],
        "answer": i % 4,
    }
    for i in range(8)
]


def write_task(root: Path, name: str = "tiny_mc", dataset: str | None = None) -> Path:
    """lm-eval's task YAML: a local JSON Lines file through the `json` dataset builder."""
    root.mkdir(parents=True, exist_ok=True)
    data = root / f"{name}.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in ITEMS))
    source = (
        f"dataset_path: {dataset}\n"
        if dataset
        else f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
    )
    (root / f"{name}.yaml").write_text(
        f"task: {name}\n{source}test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{question}}\\nAnswer:"\n'
        'doc_to_choice: "{{choices}}"\n'
        "doc_to_target: answer\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    return root


def loglikelihood(model: Any, tokenizer: Any, context: str, continuation: str) -> float:
    """log P(continuation | context), as the model reads text (with its BOS), computed directly."""
    whole = tokenizer(context + continuation)["input_ids"]
    n = len(tokenizer(context)["input_ids"])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0].float(), dim=-1)
    return sum(float(logp[i - 1, whole[i]]) for i in range(n, len(whole)))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama_dir(tmp_path_factory.mktemp("mmlu") / "tiny")


def test_local_multiple_choice_task_matches_direct_loglikelihoods(model_dir: Path, tmp_path: Path) -> None:
    tasks = write_task(tmp_path / "tasks")
    env_before = {k: os.environ.get(k) for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")}
    phases: list[tuple[str, int, int]] = []
    kw: dict[str, Any] = {
        "cache_dir": tmp_path / "cache",
        "llm_settings": LLMSettings(),
        "tasks": ("tiny_mc",),
        "include_path": tasks,
        "batch_size": 3,
    }
    summary, samples = mmlu.evaluate(str(model_dir), on_progress=lambda *p: phases.append(p), **kw)
    assert {k: os.environ.get(k) for k in env_before} == env_before  # offline only for the run
    acc = summary.results["tiny_mc"]["acc"]
    assert 0.0 <= acc <= 1.0 and summary.score == acc and summary.n == {"tiny_mc": 8}
    assert summary.model.startswith("hf:") and summary.tasks == ["tiny_mc"]
    assert ("model: lm-eval log-likelihoods", 32, 32) in phases

    # Independently: every choice's log-likelihood, the argmax per item, and the accuracy they give.
    tok = AutoTokenizer.from_pretrained(model_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    by_doc = {s["doc_id"]: s for s in samples["tiny_mc"]}
    correct = 0
    for i, item in enumerate(ITEMS):
        context = f"{item['question']}\nAnswer:"
        mine = [loglikelihood(model, tok, context, " " + c) for c in item["choices"]]
        theirs = [r[0] for r in by_doc[i]["filtered_resps"]]
        assert theirs == pytest.approx(mine, abs=1e-3)
        correct += int(max(range(4), key=lambda j: mine[j]) == item["answer"])
    assert acc == pytest.approx(correct / len(ITEMS))

    # Second run: every log-likelihood comes from lm-eval's cache, the model is never asked.
    phases.clear()
    again, _ = mmlu.evaluate(str(model_dir), on_progress=lambda *p: phases.append(p), **kw)
    assert again.score == acc and not any("log-likelihoods" in p[0] for p in phases)

    # The CLI over the same path: --include-path, JSON out, mmlu.json written.
    out = tmp_path / "eval"
    result = CliRunner().invoke(
        app,
        ["evaluate", "mmlu", "--model", str(model_dir), "--tasks", "tiny_mc", "--include-path", str(tasks),
         "--out", str(out), "--format", "json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["model"]["score"] == acc and "base" not in printed
    assert json.loads((out / "mmlu.json").read_text()) == printed and (out / "mmlu.png").stat().st_size > 1000


def test_dataset_not_cached_offline_is_unavailable(model_dir: Path, tmp_path: Path) -> None:
    # A hub dataset that is not in the local cache: offline mode refuses to fetch it.
    tasks = write_task(tmp_path / "tasks", "hub_mc", dataset="labalign-tests/not-cached-anywhere")
    with pytest.raises(EvalUnavailable) as info:
        mmlu.evaluate(
            str(model_dir),
            cache_dir=tmp_path,
            llm_settings=LLMSettings(),
            tasks=("hub_mc",),
            include_path=tasks,
        )
    assert "local Hugging Face cache" in info.value.message and "huggingface-cli download cais/mmlu" in str(
        info.value
    )
    args = [
        "--model",
        str(model_dir),
        "--tasks",
        "hub_mc",
        "--include-path",
        str(tasks),
        "--out",
        str(tmp_path),
    ]
    result = CliRunner().invoke(app, ["evaluate", "mmlu", *args])
    assert result.exit_code == 1 and "not in the local Hugging Face cache" in result.output


def test_unknown_task_is_an_error_not_a_skip(model_dir: Path, tmp_path: Path) -> None:
    tasks = write_task(tmp_path / "tasks")
    with pytest.raises(LabalignError, match="unknown lm-eval task") as info:
        mmlu.evaluate(
            str(model_dir),
            cache_dir=tmp_path,
            llm_settings=LLMSettings(),
            tasks=("nope_task_xyz",),
            include_path=tasks,
        )
    assert not isinstance(info.value, EvalUnavailable)


def test_url_model_uses_the_completions_endpoint_and_a_local_tokenizer(model_dir: Path) -> None:
    # Built without contacting the server: the model name comes from the settings, the tokenizer from disk.
    lm = mmlu._url_model("http://127.0.0.1:9/v1/", LLMSettings(model_name="served"), model_dir)
    assert lm.base_url == "http://127.0.0.1:9/v1/completions" and lm.model == "served"
    assert lm.tokenizer.encode("Answer: 4") == AutoTokenizer.from_pretrained(model_dir).encode("Answer: 4")
