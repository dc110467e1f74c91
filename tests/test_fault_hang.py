"""The hang check through ``pytest --llmcheck``: a DataLoader whose worker deadlocks is reported
as ``timeout`` with the stuck frame's file:line and every process's stacks, and leaves no process
behind; a healthy DataLoader with worker processes passes."""

from __future__ import annotations

import os
import shutil
import textwrap
from types import SimpleNamespace

import psutil
import pytest
from model_sources import CLEAN

DATA = (
    CLEAN
    + """

import os
import threading
from pathlib import Path

LOCK = threading.Lock()


class Tokens(torch.utils.data.Dataset):
    def __init__(self, stuck_at=None):
        self.stuck_at = stuck_at

    def __len__(self):
        return 8

    def __getitem__(self, i):
        if i == self.stuck_at:
            with open(Path(__file__).with_name("stuck_pids.txt"), "a") as f:
                f.write(f"{os.getpid()} {os.getpgrp()}\\n")
            LOCK.acquire()
            LOCK.acquire()  # the same lock twice: this DataLoader worker never returns
        return torch.randint(0, V, (T // 2,), generator=torch.Generator().manual_seed(i))


@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T)
def stuck():
    return TinyLM()


@llmcheck.eval_data(models="tiny")
def healthy_loader():
    return torch.utils.data.DataLoader(Tokens(), batch_size=2, num_workers=2)


@llmcheck.eval_data(models="stuck")
def deadlocking_loader():
    return torch.utils.data.DataLoader(Tokens(stuck_at=5), batch_size=2, num_workers=2)
"""
)


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Workers inherit this: OpenMP's spinning threads slow a tiny model 50x on a busy 2-core machine."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _survivors(pgids: set[int], pids: set[int]) -> list[int]:
    """Running processes (zombies are dead) with one of ``pids`` or in one of ``pgids``."""
    return [
        proc.pid
        for proc in psutil.process_iter(["status"])
        if proc.info["status"] != psutil.STATUS_ZOMBIE and (proc.pid in pids or _pgid(proc.pid) in pgids)
    ]


def _by_model(result, check: str) -> dict:
    return {r["model"]: r for r in result.report["results"] if r["check"] == check}


def test_a_deadlocked_dataloader_worker_times_out_with_its_frame_and_leaves_no_process(run_llmcheck, pytester):
    result = run_llmcheck(DATA, "-k", "hang", "--llmcheck-set", "hang.timeout=10")
    records = _by_model(result, "hang")
    stuck, healthy = records["stuck"], records["tiny"]

    assert healthy["status"] == "passed", healthy["message"]
    assert "eval: 4 step(s) from a DataLoader with 2 worker process(es)" in healthy["message"]

    assert stuck["status"] == "timeout", stuck["message"]
    source = textwrap.dedent(DATA).splitlines()
    line = next(i for i, text in enumerate(source, 1) if "the same lock twice" in text)
    assert f"model.py:{line} in __getitem__ (DataLoader worker pid " in stuck["message"]
    assert "last progress: phase=eval, step=3, of=20" in stuck["message"]  # batches 1-2 done, 3 stuck
    assert "s before the timeout" in stuck["message"]
    trace = stuck["trace"]
    assert "--- worker pid" in trace and "--- DataLoader worker pid" in trace
    assert trace.count("(faulthandler) ---") >= 3  # the worker and both DataLoader workers
    assert "in _worker_loop" in trace and f'model.py", line {line} in __getitem__' in trace
    if shutil.which("py-spy"):
        assert "(py-spy dump --native) ---" in trace

    records = [r.split() for r in (pytester.path / "stuck_pids.txt").read_text().splitlines()]
    pids, pgids = {int(pid) for pid, _ in records}, {int(pgid) for _, pgid in records}
    assert len(pgids) == 1  # the DataLoader workers share the hung worker's process group
    assert _survivors(pgids, pids) == []


def test_a_step_slower_than_max_step_s_fails_though_it_finished():
    from llmcheck.checks.hang import judge

    phases = {"train": {"steps": 3, "median_s": 0.01, "max_s": 4.2, "slowest_step": 2, "loader_workers": None}}
    verdict = judge({"phases": phases, "timeout_s": 60.0}, SimpleNamespace(max_step_s=2.0))
    assert verdict.status == "failed"
    assert verdict.message == ("train step 2 took 4.2 s > max_step_s 2 s (median 0.01 s): slow, though it finished")
    assert judge({"phases": phases, "timeout_s": 60.0}, SimpleNamespace(max_step_s=0.0)).status == "passed"
