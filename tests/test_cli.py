"""The `llmcheck` command: compare (exit codes, terminal, Markdown, JSON), report, checks."""

from __future__ import annotations

import json
import shutil
import subprocess
from importlib.metadata import entry_points

import pytest
from report_data import document, latency, record

from llmcheck.cli import main
from llmcheck.registry import load_checks
from llmcheck.reports import json_report


@pytest.fixture
def reports(tmp_path):
    def write(base: list[dict], head: list[dict]) -> tuple[str, str]:
        return (
            str(json_report.write(tmp_path / "base.json", document(base))),
            str(json_report.write(tmp_path / "head.json", document(head))),
        )

    return write


def test_compare_exits_zero_without_a_regression_and_prints_a_table(reports, capsys):
    base, head = reports([record("checkpoint"), record("eval", "failed")], [record("checkpoint"), record("eval")])
    assert main(["compare", base, head]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "llmcheck compare: 2 paired checks, no regressions"
    assert "improvement  model.py::tiny::eval" in out and "failed -> passed" in out


def test_compare_exits_one_on_a_regression(reports, capsys):
    base, head = reports([record("checkpoint"), latency(1, 1.0, n=80)], [latency(1, 1.2, n=80, seed=1)])
    assert main(["compare", base, head]) == 1
    out = capsys.readouterr().out
    assert "2 REGRESSION(S)" in out
    assert "regression model.py::tiny::checkpoint missing the check ran in BASE" in " ".join(out.split())
    assert "regression   model.py::tiny::latency[bs=1-sl=16-float32-eager]  samples forward_ms" in out


def test_compare_writes_markdown_and_json_to_files_and_the_table_to_the_terminal(reports, tmp_path, capsys):
    base, head = reports([record("checkpoint")], [record("checkpoint", "failed", message="max |Δ| = 0.5 > atol 0")])
    assert main(["compare", base, head, "--markdown", str(tmp_path / "pr.md"), "--json", str(tmp_path / "c.json")]) == 1
    assert "1 REGRESSION(S)" in capsys.readouterr().out
    assert (tmp_path / "pr.md").read_text().startswith("❌ **llmcheck compare: 1 regression**")
    result = json.loads((tmp_path / "c.json").read_text())
    assert result["regressions"] == 1 and result["rows"][0]["note"] == "passed -> failed: max |Δ| = 0.5 > atol 0"


def test_compare_markdown_to_stdout_replaces_the_table(reports, capsys):
    base, head = reports([record("checkpoint")], [record("checkpoint")])
    assert main(["compare", base, head, "--markdown"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("✅ **llmcheck compare: no regressions**") and "paired checks" not in out


def test_compare_refuses_mismatched_environments_unless_allowed(tmp_path, capsys):
    base = json_report.write(tmp_path / "base.json", document([record("eval")]))
    head = json_report.write(
        tmp_path / "head.json", document([record("eval")], env={"torch": "2.1.0", "device": "cpu"})
    )
    assert main(["compare", str(base), str(head)]) == 2
    assert "torch: BASE '2.13.0+cpu', HEAD '2.1.0'" in capsys.readouterr().err
    assert main(["compare", str(base), str(head), "--allow-env-mismatch"]) == 0
    assert "warning: environments differ (allowed by --allow-env-mismatch)" in capsys.readouterr().out


def test_the_console_script_is_installed_and_gates(reports):
    (script,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "llmcheck"]
    assert script.value == "llmcheck.cli:main"
    exe = shutil.which("llmcheck")
    if exe is None:
        pytest.skip("the llmcheck script is not on PATH (pip install -e .)")
    base, head = reports([record("checkpoint")], [record("checkpoint", "crashed")])
    done = subprocess.run([exe, "compare", base, head], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "1 REGRESSION(S)" in done.stdout


def test_checks_lists_every_registered_check_with_its_parameters(capsys):
    assert main(["checks"]) == 0
    out = capsys.readouterr().out
    for name, check in load_checks().items():
        assert f"{name}  [{check.family}]" in out
        for param in check.params:
            assert f"    {name}.{param} = " in out
    assert "checkpoint.atol = 0.0  (float, >= 0)" in out
    assert "checkpoint.timeout = 300.0" in out  # every check accepts a timeout


def test_checks_as_json(capsys):
    assert main(["checks", "--json"]) == 0
    listing = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
    assert set(listing) == set(load_checks())
    assert listing["gradient"]["params"]["overfit_steps"]["type"] == "int"


def test_report_writes_a_markdown_run_summary(tmp_path, capsys):
    run = json_report.write(tmp_path / "run.json", document([record("eval", "failed", message="a | b <i>x</i>")]))
    assert main(["report", str(run), "--markdown"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("❌ **llmcheck: 1 failed**")
    assert "| failed | model.py::tiny::eval | a \\| b &lt;i&gt;x&lt;/i&gt; |" in out


def test_report_with_nothing_to_do_says_so(tmp_path, capsys):
    run = json_report.write(tmp_path / "run.json", document([]))
    assert main(["report", str(run)]) == 2
    assert "pass --html OUT.html" in capsys.readouterr().err
