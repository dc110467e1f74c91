"""Reports are never lost: a session killed mid-run leaves a valid JSON report of what finished, and
checks that time out or crash are in both reports like any other outcome."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from model_sources import CLEAN, variant

from llmcheck.cli import main
from llmcheck.reports import json_report

# The checkpoint check finishes; the eval check, which runs next, then hangs in the model's factory
# (and says where it is), so the session is killed mid-run with one item done.
HANGS_IN_EVAL = CLEAN.replace(
    "def tiny():\n",
    """def tiny():
    import inspect, os, pathlib, time
    if any(frame.filename.endswith("eval_mode.py") for frame in inspect.stack()):
        pathlib.Path("hung.pid").write_text(str(os.getpid()))
        time.sleep(60)
""",
)

FAULTS = (
    variant("@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T)\ndef tiny():\n    return TinyLM()\n", "")
    + """

@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T)
def crashy():
    import os
    os._exit(3)


@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T)
def sleepy():
    import time
    time.sleep(60)
"""
)


def wait_for(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _as_from_a_terminal() -> None:
    """SIGINT handled as in a shell: under `-n 4` the session twice ignored it in CI (the xdist
    worker that starts it may have SIGINT ignored or blocked, and both are inherited across exec;
    Python installs its KeyboardInterrupt handler only over the default disposition)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_killing_the_session_mid_run_leaves_a_valid_report_of_what_finished(tmp_path, sig):
    (tmp_path / "model.py").write_text(HANGS_IN_EVAL)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "--llmcheck",
        "model.py",
        "-k",
        "(checkpoint and not checkpointing) or eval",
        "-p",
        "no:cacheprovider",
        "--llmcheck-json",
        "report.json",
        "--llmcheck-html",
        "report.html",
    ]
    with open(tmp_path / "out.txt", "wb") as out:
        session = subprocess.Popen(
            cmd,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_as_from_a_terminal,
        )
    worker = None
    try:
        # the model creates hung.pid, then writes its pid: wait for the digits, not only the file
        hung = tmp_path / "hung.pid"
        wait_for(
            lambda: (hung.exists() and hung.read_text().strip().isdigit()) or session.poll() is not None,
            180,
            "the eval check to hang",
        )
        assert session.poll() is None, (tmp_path / "out.txt").read_text()
        worker = int((tmp_path / "hung.pid").read_text())
        session.send_signal(sig)
        # pytest's interrupt path collects the hung worker's stacks, kills it and writes both
        # reports: at the end of a -n 4 run on two loaded cores it was still writing after 60 s once
        session.wait(timeout=150)
    finally:
        if session.poll() is None:
            session.kill()
            session.wait()
    report = json_report.read(tmp_path / "report.json")  # valid, digest included
    assert [(r["id"], r["status"]) for r in report["results"]] == [("model.py::tiny::checkpoint", "passed")]
    assert report["interrupted"] is True
    if sig == signal.SIGKILL:  # no chance to clean up: the worker is orphaned, and the page not written
        assert not (tmp_path / "report.html").exists()
        os.killpg(worker, signal.SIGKILL)
        assert main(["report", str(tmp_path / "report.json"), "--html", str(tmp_path / "report.html")]) == 0
    else:  # pytest's interrupt path: both reports written, the hung worker's process group killed
        wait_for(lambda: not alive(worker), 10, f"worker {worker} to be killed")
        out = (tmp_path / "out.txt").read_text()
        assert "llmcheck HTML report: report.html" in out, out
    page = (tmp_path / "report.html").read_text()
    assert "This run did not finish" in page and "tiny::checkpoint" in page


def test_checks_that_time_out_or_crash_are_in_both_reports(run_llmcheck, pytester):
    result = run_llmcheck(
        FAULTS, "-k", "checkpoint and not checkpointing", "--llmcheck-timeout", "3", "--llmcheck-html", "report.html"
    )
    statuses = {r["model"]: r["status"] for r in result.report["results"]}
    assert statuses == {"crashy": "crashed", "sleepy": "timeout"}
    assert result.report["interrupted"] is False
    crashed = next(r for r in result.report["results"] if r["model"] == "crashy")
    assert "exit status 3" in crashed["message"]
    page = (pytester.path / "report.html").read_text()
    assert page.count('class="badge s-crashed"') == 1 and page.count('class="badge s-timeout"') == 1
    assert "timed out during run (timeout 3 s)" in page
