"""A model that aborts or calls ``os._exit`` inside a check: that check is ``crashed`` with the
signal or exit status and the Python frames where it happened; the model's next check runs in a
fresh worker and the report holds both. (Segfaults and the harness's own timeout and crash
handling are covered in test_isolation.py.)"""

from __future__ import annotations

import textwrap

import pytest
from model_sources import CLEAN

CRASHING_DATA = (
    CLEAN
    + """

import os


@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T, checks={"memory": False})
def aborts():
    return TinyLM()


@llmcheck.eval_data(models="tiny")
def exits_mid_pass():
    yield torch.randint(0, V, (2, 8))
    os._exit(3)  # the worker ends here, inside the hang check's eval pass


@llmcheck.eval_data(models="aborts")
def aborts_mid_pass():
    yield torch.randint(0, V, (2, 8))
    os.abort()  # SIGABRT: a C library's assert() looks the same
"""
)

ARGS = (
    "-k",
    "hang or memory",
    "--llmcheck-set",
    "memory.batch_sizes=[1]",
    "--llmcheck-set",
    "memory.seq_lens=[8]",
    "--llmcheck-set",
    "memory.max_batch_size=2",
    "--llmcheck-set",
    "memory.mode=inference",
)


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Workers inherit this: OpenMP's spinning threads slow a tiny model 50x on a busy 2-core machine."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _line(marker: str) -> int:
    return next(i for i, text in enumerate(textwrap.dedent(CRASHING_DATA).splitlines(), 1) if marker in text)


def test_abort_and_os_exit_inside_a_check_are_crashed_with_their_frames_and_the_next_check_runs(run_llmcheck):
    result = run_llmcheck(CRASHING_DATA, *ARGS)
    records = {(r["model"], r["check"]): r for r in result.report["results"]}
    assert set(records) == {("tiny", "hang"), ("tiny", "memory"), ("aborts", "hang"), ("aborts", "memory")}

    exited = records[("tiny", "hang")]
    assert exited["status"] == "crashed"
    assert exited["message"].startswith("worker died with exit status 3 during run")
    assert f"at model.py:{_line('os._exit(3)')} in exits_mid_pass" in exited["message"]
    assert "os._exit(3) called:" in exited["trace"]

    aborted = records[("aborts", "hang")]
    assert aborted["status"] == "crashed"
    assert aborted["message"].startswith("worker died with signal SIGABRT during run")
    assert f"at model.py:{_line('os.abort()')} in aborts_mid_pass" in aborted["message"]
    assert "Fatal Python error: Aborted" in aborted["trace"]

    after = records[("tiny", "memory")]  # the next check, in a fresh worker
    assert after["status"] == "passed", after["message"]
    assert records[("aborts", "memory")]["status"] == "skipped"  # turned off: spares a worker start
    result.assert_outcomes(passed=1, failed=2, skipped=1)
