"""The terminal: a one-screen summary at the end of the run, and progress lines on long checks."""

from __future__ import annotations

from model_sources import CLEAN
from report_data import latency, record

from llmcheck.plugins import progress
from llmcheck.plugins.progress import Ticker
from llmcheck.plugins.report_writer import summary_lines

SLOW_FACTORY = CLEAN.replace("def tiny():\n", "def tiny():\n    import time\n    time.sleep(1.5)\n")


def test_the_summary_is_a_families_by_status_table_with_the_slowest_checks():
    records = [
        record("checkpoint", duration_s=1.0),
        record("eval", "failed", duration_s=3.0),
        record("eval", "skipped", model="other", duration_s=0.1),
        latency(1, 1.0),
        latency(8, 2.0),
    ]
    records[-1]["duration_s"] = 7.5
    lines = summary_lines(records)
    assert lines == [
        "llmcheck: 3 passed, 1 failed, 1 skipped",
        "family        passed    failed   skipped",
        "checkpoint         1         .         .",
        "eval               .         1         1",
        "latency            2         .         .",
        "slowest: latency on tiny 7.5 s, eval on tiny 3.0 s, checkpoint on tiny 1.0 s",
    ]


def test_a_run_ends_with_the_summary_and_the_report_paths(run_llmcheck):
    result = run_llmcheck(
        SLOW_FACTORY,
        "-k",
        "checkpoint and not checkpointing",
        "--llmcheck-html",
        "out/report.html",
        "-o",
        "llmcheck_progress=0.5",
    )
    result.stdout.fnmatch_lines(
        [
            "*llmcheck: running tiny::checkpoint for * s*",
            "*- llmcheck: 1 passed -*",
            "family*passed",
            "checkpoint*1",
            "slowest: checkpoint on tiny * s",
            "llmcheck JSON report: report.json",
            "llmcheck HTML report: out/report.html",
        ]
    )


def test_progress_lines_are_off_when_set_to_zero():
    assert progress.for_item(item=None, pool=None, every=0) is None


def test_a_progress_line_names_the_check_and_its_last_heartbeat(pytestconfig):
    ticker = Ticker(pytestconfig, "tiny::latency[bs=8]", 10, lambda: {"op": "progress", "series": "decode", "bs": 8})
    assert ticker.line() == "llmcheck: running tiny::latency[bs=8] for 0 s (last progress: series=decode, bs=8)"
    quiet = Ticker(pytestconfig, "tiny::eval", 10, lambda: None)
    assert quiet.line() == "llmcheck: running tiny::eval for 0 s"


def test_a_bad_progress_setting_is_a_usage_error(run_llmcheck):
    result = run_llmcheck(CLEAN, "-k", "checkpoint and not checkpointing", "-o", "llmcheck_progress=soon")
    result.stderr.fnmatch_lines(["*llmcheck_progress = 'soon': expected seconds*"])
    assert result.ret == 4
