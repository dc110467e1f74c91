"""Isolation: hangs, crashes and dead workers become outcomes with evidence; the run goes on."""

import time

import psutil
import pytest
from model_sources import CLEAN, variant


# The model misbehaves only in eval mode, so `eval` hits the fault and `gradient` (train mode) does not.
def misbehaving_in_eval(statement: str, imports: str = "") -> str:
    source = variant(
        "    def forward(self, idx):\n",
        f"    def forward(self, idx):\n        if not self.training:\n            {statement}\n",
    )
    return imports + source


def test_a_python_hang_times_out_with_the_stuck_line_and_the_next_check_runs(run_llmcheck):
    result = run_llmcheck(
        misbehaving_in_eval("while True: pass"),
        "-k",
        "eval or resume",
        "--llmcheck-timeout",
        "3",
        "--llmcheck-set",
        "resume.timeout=300",
    )
    result.assert_outcomes(passed=1, failed=1)
    record = result.by_check["eval"]
    assert record["status"] == "timeout"
    assert "timed out during run (timeout 3 s), stuck at model.py:" in record["message"]
    assert "in forward" in record["message"]
    assert 'model.py", line' in record["trace"] and "thread 0x" in record["trace"].lower()
    assert result.by_check["resume"]["status"] == "passed"


def test_a_hang_in_native_code_times_out_with_thread_stacks(run_llmcheck):
    source = misbehaving_in_eval("ctypes.CDLL(None).pause()", imports="import ctypes\n")
    result = run_llmcheck(source, "-k", "eval", "--llmcheck-timeout", "3")
    record = result.by_check["eval"]
    assert record["status"] == "timeout"
    assert "stuck at model.py:" in record["message"]  # the Python line that called into native code
    result.stdout.fnmatch_lines(["*timeout* timed out during run*"])


def test_a_segfault_is_crashed_with_the_signal_and_fault_trace(run_llmcheck):
    source = misbehaving_in_eval("ctypes.string_at(0)", imports="import ctypes\n")
    result = run_llmcheck(source, "-k", "eval or resume")
    result.assert_outcomes(passed=1, failed=1)
    record = result.by_check["eval"]
    assert record["status"] == "crashed"
    assert "worker died with signal SIGSEGV" in record["message"] and "model.py:" in record["message"]
    assert "Segmentation fault" in record["trace"]
    assert result.by_check["resume"]["status"] == "passed"


@pytest.mark.parametrize(
    "statement, expected",
    [
        ("os.abort()", "signal SIGABRT"),
        ("os._exit(3)", "exit status 3"),
        ("os.kill(os.getpid(), 9)", "signal SIGKILL"),
    ],
)
def test_a_worker_that_dies_any_way_is_crashed_not_passed(run_llmcheck, statement, expected):
    result = run_llmcheck(misbehaving_in_eval(statement, imports="import os\n"), "-k", "eval")
    record = result.by_check["eval"]
    assert record["status"] == "crashed" and expected in record["message"]


def test_every_check_hanging_still_finishes_the_session_with_one_outcome_each(run_llmcheck):
    source = variant("    def forward(self, idx):\n", "    def forward(self, idx):\n        time.sleep(3600)\n")
    result = run_llmcheck(
        "import time\n" + source,
        "--llmcheck-timeout",
        "2",
        "-k",
        "(checkpoint and not checkpointing) or eval or frozen or gradient or resume",
    )
    statuses = {r["check"]: r["status"] for r in result.report["results"]}
    assert set(statuses) >= {"checkpoint", "eval", "frozen", "gradient", "resume"}
    assert {s for c, s in statuses.items() if c in ("checkpoint", "eval", "gradient", "resume")} == {"timeout"}
    assert set(statuses.values()) <= {"timeout", "skipped"}  # every item ended, each with one outcome


def test_a_timeout_kills_the_workers_whole_process_group(run_llmcheck, pytester):
    pidfile = pytester.path / "child.pid"
    source = misbehaving_in_eval(
        f"p = subprocess.Popen(['sleep', '600']); open({str(pidfile)!r}, 'w').write(str(p.pid)); time.sleep(600)",
        imports="import subprocess, time\n",
    )
    result = run_llmcheck(source, "-k", "eval", "--llmcheck-timeout", "3")
    assert result.by_check["eval"]["status"] == "timeout"
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, f"child process {child} outlived the killed worker"
        time.sleep(0.1)


def test_a_hang_while_importing_the_model_file_is_a_collection_error_with_the_stack(run_llmcheck):
    result = run_llmcheck("import time\ntime.sleep(600)\n" + CLEAN, "--llmcheck-set", "startup_timeout=10")
    result.stdout.fnmatch_lines(["*llmcheck could not load model.py: timed out during describe*", "*model.py*line 2*"])
    assert result.ret != 0


def test_an_import_error_in_the_model_file_is_a_collection_error_naming_it(run_llmcheck):
    result = run_llmcheck("import not_a_module_anywhere\n" + CLEAN)
    result.stdout.fnmatch_lines(
        ["*importing model.py raised ModuleNotFoundError: No module named 'not_a_module_anywhere'*"]
    )


def test_no_worker_process_survives_the_session(run_llmcheck):
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    run_llmcheck(CLEAN, "-k", "eval")
    after = {p.pid for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE}
    assert after <= before


def test_the_worker_output_is_captured_per_check(run_llmcheck):
    source = variant(
        "    def forward(self, idx):\n", "    def forward(self, idx):\n        print('hello from forward')\n"
    )
    result = run_llmcheck(source, "-k", "gradient", "-rA")
    assert "hello from forward" in result.by_check["gradient"]["output"]
    result.stdout.fnmatch_lines(["*Captured worker output call*", "hello from forward"])
