"""The report's evaluation section: self-contained, escaped, built from whatever results exist."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from labalign.errors import LabalignError
from labalign.evaluate import branch
from labalign.evaluate.plots import branch_chart
from labalign.evaluate.questions import EvalQuestion
from labalign.evaluate.results import (
    BranchResult,
    EvalResults,
    Evaluations,
    Models,
    Regression,
    Skipped,
    save,
)
from labalign.report.evaluation import section


def _branch_result() -> BranchResult:
    qs = [EvalQuestion("skills/<b>evil</b>", "freeform_skill", "heldout", f"q{i}", "a b c") for i in range(8)]
    qs += [EvalQuestion("knowledge/x", "knowledge", "seed", f"k{i}", "x y") for i in range(8)]
    tuned = branch.Scored("tuned<script>", ["a b c"] * 8 + ["nope"] * 8, [1.0] * 8 + [0.0] * 8, [1.0] * 16)
    base = branch.Scored("base", ["zzz"] * 8 + ["x y"] * 8, [0.0] * 8 + [1.0] * 8, [0.5] * 16)
    return branch.report(qs, tuned, base, None)


def test_branch_section_table_plot_and_escaping(tmp_path: Path) -> None:
    result = _branch_result()
    save(tmp_path / "branch.json", result)
    branch_chart(result, tmp_path / "branch.png")
    html = section(tmp_path)
    assert html.startswith('<section class="evaluation">') and html.endswith("</section>")
    assert html.count("<section") == 1
    # Model text and leaf names are escaped, never markup.
    assert "<script>" not in html and "tuned&lt;script&gt;" in html
    assert "<b>evil</b>" not in html and "skills/<wbr>&lt;b&gt;evil&lt;/<wbr>b&gt;" in html
    # The first leaf improved significantly, the second regressed: both coloured by sign.
    assert html.count('class="delta-pos"') >= 1 and html.count('class="delta-neg"') >= 1
    assert '<table class="table">' in html
    # The plot is inline and decodes to the very PNG on disk; nothing is linked from outside.
    (uri,) = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert base64.b64decode(uri) == (tmp_path / "branch.png").read_bytes()
    assert "http" not in html and "href" not in html


def test_skipped_and_missing_and_regressions(tmp_path: Path) -> None:
    assert "No evaluation results" in section(tmp_path)
    (tmp_path / "mt_bench.json").write_text(json.dumps({"skipped": "no judge: give --judge <model>"}))
    results = EvalResults(
        models=Models(model="tuned"),
        evaluations=Evaluations(mmlu=Skipped(skipped="MMLU not in the HF cache & offline")),
        regressions=[Regression(eval="forgetting", metric="perplexity", message="perplexity up 25% > 10%")],
    )
    save(tmp_path / "results.json", results)
    html = section(tmp_path)
    assert "skipped: no judge: give --judge &lt;model&gt;" in html
    assert "MMLU not in the HF cache &amp; offline" in html
    assert '<div class="flag">' in html and "perplexity up 25% &gt; 10%" in html
    assert "Branch evaluation" not in html  # never ran: not shown


def test_unreadable_result_file_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "branch.json").write_text("{oops")
    with pytest.raises(LabalignError) as info:
        section(tmp_path)
    assert info.value.path == str(tmp_path / "branch.json")
