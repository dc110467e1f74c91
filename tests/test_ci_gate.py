"""``llmcheck ci`` on a real git repository: statuses gated against main's report, speed by A/B.

A temporary repository holds the A/B tests' block-stack model (tests/ab_model_sources.py) with 4
blocks on ``main``; main's report comes from a real ``pytest --llmcheck`` run. Three pull requests
branch from it: one doubles the blocks (about 2x slower: on a noisy shared 2-core runner a 25 %
step is not called reliably within a test's budget, so the 25 % and 10 % sensitivity is measured in
benchmarks/ab_sensitivity.py instead), one changes nothing the model runs, and one leaves dropout
active in eval, which the eval check catches. The verdicts must read fail, pass, fail, and the
Markdown comment must say why. Only the eval check runs in the suite (``--pytest-args``), to keep
the test short; the A/B half always measures latency.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from ab_model_sources import BLOCKS, write
from report_data import document, record

from llmcheck import cli
from llmcheck.ab import ci as ab_ci
from llmcheck.reports import ci_comment, compare

A_B = [
    "--ab-set",
    "latency.batch_sizes=[8]",
    "--ab-set",
    'latency.precisions=["float32"]',
    "--ab-set",
    "latency.seq_lens=[16]",
    "--ab-precision",
    "10%",  # a 2x step needs no 2 % precision: stop once 3 process pairs give ±10 %
    "--ab-min-pairs",
    "3",
    "--pytest-args",
    "-k eval",
    "-q",
]
DROPOUT_IN_EVAL = BLOCKS.replace(
    "return x + self.down(torch.relu(self.up(x)))",
    "return x + torch.nn.functional.dropout(self.down(torch.relu(self.up(x))), 0.5, training=True)",
)


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> dict:
    """A repository with the 4-block model on main, and main's stored report (eval passes)."""
    root = tmp_path_factory.mktemp("ci") / "repo"
    write(root, 4)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "four blocks")
    report = root.parent / "main-report.json"
    suite = ab_ci.run_suite("main", ["model.py"], report, "-k eval", cwd=root)
    assert suite.written, suite.output
    return {"root": root, "main": git(root, "rev-parse", "HEAD"), "report": report}


def pull_request(repo: dict, name: str, files: dict[str, str]) -> Path:
    root = repo["root"]
    git(root, "checkout", "-q", "-B", name, repo["main"])
    for path, text in files.items():
        (root / path).write_text(text)
    git(root, "commit", "-q", "-am", name)
    return root


def llmcheck_ci(repo: dict, monkeypatch, capsys, out: Path, *extra: str) -> tuple[int, dict, str]:
    monkeypatch.chdir(repo["root"])
    code = cli.main(["ci", "model.py", "--base-ref", repo["main"], "--out", str(out), *extra, *A_B])
    printed = capsys.readouterr().out
    comment = (out / "comment.md").read_text()
    print(comment)  # the pull-request comment, for the log
    assert printed == comment
    return code, json.loads((out / "ci.json").read_text()), comment


def test_a_pull_request_that_doubles_the_work_fails_on_the_ab_half(repo, monkeypatch, capsys, tmp_path):
    pull_request(repo, "slower", {"blocks.py": BLOCKS.format(n=8)})
    code, doc, comment = llmcheck_ci(
        repo, monkeypatch, capsys, tmp_path, "--main-report", str(repo["report"]), "--ab-budget", "40s"
    )
    (result,) = doc["ab"][0]["results"]
    assert (code, doc["verdict"]) == (1, "fail"), comment
    assert result["verdict"] == "regression" and result["estimate"]["ci_low"] > 1.05, result["message"]
    assert doc["checks"]["rows"] == [] and doc["checks"]["error"] is None  # eval still passes
    assert comment.startswith(ci_comment.MARKER + "\n## ❌ llmcheck: 1 blocking regression")
    assert f"{result['estimate']['ratio']:.3f}" in comment and "| regression |" in comment
    assert doc["ab"][0]["base"]["commit"] == repo["main"]
    assert git(repo["root"], "worktree", "list", "--porcelain").count("worktree ") == 1  # BASE's checkout is gone


def test_a_pull_request_that_changes_nothing_the_model_runs_passes(repo, monkeypatch, capsys, tmp_path):
    # No stored report here: the statuses come from a run of the suite on BASE instead.
    root = pull_request(repo, "same", {"model.py": (repo["root"] / "model.py").read_text() + "\n# a comment\n"})
    code, doc, comment = llmcheck_ci(repo, monkeypatch, capsys, tmp_path, "--ab-budget", "20s")
    (result,) = doc["ab"][0]["results"]
    assert (code, doc["verdict"]) == (0, "pass"), comment
    assert result["verdict"] == "no significant change", result["message"]
    assert doc["checks"]["against"] == f"a run on BASE {repo['main'][:10]}"
    assert (tmp_path / "base-report.json").is_file() and doc["checks"]["rows"] == []
    assert comment.startswith(ci_comment.MARKER + "\n## ✅ llmcheck: nothing blocks this change")
    could = re.search(r"\| \+(\d+\.\d)% \| no significant change \|", comment)  # "could have detected +X%"
    assert could and float(could.group(1)) == pytest.approx(100 * result["detectable"]["slowdown"], abs=0.06)
    assert root == repo["root"]


def test_a_pull_request_that_leaves_dropout_on_in_eval_fails_on_the_eval_check(repo, monkeypatch, capsys, tmp_path):
    pull_request(repo, "dropout", {"blocks.py": DROPOUT_IN_EVAL.format(n=4)})
    code, doc, comment = llmcheck_ci(
        repo, monkeypatch, capsys, tmp_path, "--main-report", str(repo["report"]), "--ab-budget", "10s"
    )
    assert (code, doc["verdict"]) == (1, "fail"), comment
    (row,) = [r for r in doc["checks"]["rows"] if r["blocking"]]
    assert (row["id"], row["base"], row["head"]) == ("model.py::stack::eval", "passed", "failed")
    assert "| ❌ blocks | model.py::stack::eval | passed | failed |" in comment
    assert doc["ab"][0]["results"][0]["pairs"]  # the A/B half ran too: the comment holds both
    assert "main's stored report" in comment


def test_only_gated_checks_block_and_an_item_failing_before_and_after_does_not():
    main = document([record("eval", "failed"), record("checkpoint"), record("gradient")])
    head = document([record("eval", "failed"), record("checkpoint", "failed"), record("gradient", "error")])
    comparison = compare.compare(main, head)
    rows = ab_ci.status_rows(comparison, head, ab_ci.parse_gate("checkpoint"))
    assert {r["check"]: r["blocking"] for r in rows} == {"checkpoint": True, "gradient": False}
    assert [r["check"] for r in ab_ci.status_rows(comparison, head, ab_ci.parse_gate("all")) if r["blocking"]] == [
        "checkpoint",
        "gradient",
    ]
    assert not any(r["blocking"] for r in ab_ci.status_rows(comparison, head, ab_ci.parse_gate("none")))


def test_user_strings_stay_text_in_the_comment():
    hostile = "<img src=x onerror=alert(1)>|`x`"
    doc = {
        "verdict": "fail",
        "blocking": 1,
        "base": {"commit": "a" * 40},
        "head": {"commit": "b" * 40},
        "gate": ["all"],
        "options": {"ab_budget_s": 10, "min_effect": 0.05},
        "checks": {
            "against": "x",
            "error": None,
            "rows": [
                {"id": hostile, "base": "passed", "head": "failed", "note": hostile, "blocking": True, "verdict": "x"}
            ],
            "still_failing": [hostile],
            "warnings": [],
            "head_summary": {"failed": 1},
        },
        "ab": [{"path": hostile, "error": hostile}],
    }
    text = ci_comment.markdown(doc)
    assert "<img" not in text and "&lt;img src=x onerror=alert(1)&gt;\\|\\`x\\`" in text
