"""The session's fork server (llmcheck.isolation.forkserver, plugins/prewarm.py): a child it forks
is the process the request describes (argv, environment, working directory, log, own session, exit
status as subprocess reports it); it refuses to fork once threads exist; it goes away with the
process that started it, and a forked child whose watched parent dies goes too; the distributed
check's ranks are forked when a session may run it, started as interpreters otherwise, and a
session that does not select it starts no server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from model_sources import CLEAN

from llmcheck.isolation.forkserver import ENV, LOST, Forked, Forkserver, fork

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def server(tmp_path, monkeypatch):
    s = Forkserver(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    s.start(("json",), env=dict(os.environ))
    s.wait_ready(timeout=60)
    assert s.path.exists(), (tmp_path / "forkserver.log").read_text()
    monkeypatch.setenv(ENV, str(s.path))
    yield s
    s.stop()


def _module(tmp_path: Path, name: str, source: str) -> None:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))


def test_a_forked_child_is_the_process_the_request_describes(server, tmp_path):
    _module(
        tmp_path,
        "probe",
        """
        import json, os, sys, torch
        print(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), "x": os.environ.get("PROBE_X"),
                          "threads": torch.get_num_threads(), "own_session": os.getsid(0) == os.getpid(),
                          "name": __name__}))
        print("to stderr", file=sys.stderr)
        sys.exit(3)
        """,
    )
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, PROBE_X="42", PYTHONPATH=str(tmp_path), OMP_NUM_THREADS="1")
    child = fork("probe", ["a", "b c"], env, str(work), tmp_path / "probe.log", tmp_path / "probe.exit")
    assert isinstance(child, Forked)
    assert child.wait(30) == 3
    out, err = (tmp_path / "probe.log").read_text().splitlines()
    assert json.loads(out) == {
        "argv": ["a", "b c"],
        "cwd": str(work),
        "x": "42",
        "threads": 1,
        "own_session": True,
        "name": "__main__",
    }
    assert err == "to stderr"
    assert not psutil.pid_exists(child.pid)  # reaped by the server, not left a zombie


def test_an_exception_exits_1_with_its_traceback_and_a_signal_is_a_negative_status(server, tmp_path):
    _module(tmp_path, "boom", "raise ValueError('from the child')\n")
    _module(tmp_path, "killed", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    boom = fork("boom", [], env, str(tmp_path), tmp_path / "boom.log", tmp_path / "boom.exit")
    killed = fork("killed", [], env, str(tmp_path), tmp_path / "killed.log", tmp_path / "killed.exit")
    assert boom.wait(30) == 1 and killed.wait(30) == -signal.SIGKILL
    assert "ValueError: from the child" in (tmp_path / "boom.log").read_text()
    _module(tmp_path, "sleeper", "import time\ntime.sleep(30)\n")
    sleeper = fork("sleeper", [], env, str(tmp_path), tmp_path / "s.log", tmp_path / "s.exit")
    with pytest.raises(subprocess.TimeoutExpired):  # wait(timeout) on a live child, as Popen's
        sleeper.wait(0.2)
    os.kill(sleeper.pid, signal.SIGKILL)
    assert sleeper.wait(10) == -signal.SIGKILL


def test_without_a_server_fork_says_so_and_the_caller_starts_the_process_itself(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert fork("json", [], dict(os.environ), None, tmp_path / "l", tmp_path / "e") is None
    monkeypatch.setenv(ENV, str(tmp_path / "missing.sock"))
    assert fork("json", [], dict(os.environ), None, tmp_path / "l", tmp_path / "e") is None


def test_the_server_refuses_to_run_when_importing_started_threads(tmp_path, monkeypatch):
    # OMP_NUM_THREADS=2 makes `import torch` start an OpenMP thread: forking then is not safe
    s = Forkserver(tmp_path)
    s.start(("json",), env=dict(os.environ, OMP_NUM_THREADS="2"))
    s.wait_ready(timeout=60)
    try:
        assert s.proc.wait(10) != 0 and not s.path.exists()
        assert "forking would not be safe" in (tmp_path / "forkserver.log").read_text()
        monkeypatch.setenv(ENV, str(s.path))
        assert fork("json", [], dict(os.environ), None, tmp_path / "l", tmp_path / "e") is None
    finally:
        s.stop()


def _gone_with_its_starter(starter: str, why: str) -> None:
    """Run ``starter`` (it prints the server's pid, then exits without stopping it); the server must
    be gone (or a zombie) within 10 s."""
    out = subprocess.run([sys.executable, "-c", starter], capture_output=True, text=True, timeout=120)
    pid = int(out.stdout.split()[0])
    deadline = time.monotonic() + 10
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, why
        time.sleep(0.05)


def test_the_server_goes_with_the_process_that_started_it(tmp_path):
    starter = textwrap.dedent(
        f"""
        import os, sys, time
        from pathlib import Path
        sys.path.insert(0, {str(ROOT)!r})
        from llmcheck.isolation.forkserver import Forkserver
        s = Forkserver(Path({str(tmp_path)!r}))
        s.start(("json",), env=dict(os.environ, OMP_NUM_THREADS="1"))
        s.wait_ready(60)
        print(s.proc.pid, flush=True)
        os._exit(0)  # no stop(): the server must notice on its own
        """
    )
    _gone_with_its_starter(starter, "the fork server outlived the process that started it")


def test_a_starting_server_is_held_still_while_a_timing_item_measures_and_goes_on_after(tmp_path, monkeypatch):
    _module(tmp_path, "slow_preload", "import time\ntime.sleep(2.0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # the server imports what this process can
    s = Forkserver(tmp_path / "run")
    (tmp_path / "run").mkdir()
    s.start(("slow_preload",), env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        time.sleep(0.2)
        assert s.starting
        with s.paused():
            time.sleep(0.2)
            assert psutil.Process(s.proc.pid).status() == psutil.STATUS_STOPPED
            cpu = psutil.Process(s.proc.pid).cpu_times()
            time.sleep(0.5)
            assert psutil.Process(s.proc.pid).cpu_times() == cpu  # no import runs beside the measurement
        assert psutil.Process(s.proc.pid).status() != psutil.STATUS_STOPPED
        assert s.wait_ready(60)
        with s.paused():  # a ready server is idle: left alone
            assert psutil.Process(s.proc.pid).status() != psutil.STATUS_STOPPED
    finally:
        s.stop()
    assert not psutil.pid_exists(s.proc.pid)


def test_a_server_held_still_dies_with_the_process_that_started_it(tmp_path):
    _module(tmp_path, "slow_preload", "import time\ntime.sleep(30)\n")
    starter = textwrap.dedent(
        f"""
        import os, sys, time
        from pathlib import Path
        sys.path[:0] = [{str(ROOT)!r}, {str(tmp_path)!r}]
        from llmcheck.isolation.forkserver import Forkserver
        s = Forkserver(Path({str(tmp_path)!r}))
        s.start(("slow_preload",), env=dict(os.environ, OMP_NUM_THREADS="1"))
        time.sleep(1.0)
        s.paused().__enter__()  # SIGSTOP, and never SIGCONT
        print(s.proc.pid, flush=True)
        os._exit(0)
        """
    )
    _gone_with_its_starter(starter, "a stopped fork server outlived the process that started it")


def test_a_forked_child_watching_a_parent_that_dies_ends_its_group(server, tmp_path):
    # the distributed ranks watch the check's worker, not the server that forked them
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    _module(
        tmp_path,
        "ranklike",
        f"""
        import os, time
        from llmcheck.isolation.child import watch_parent
        watch_parent({parent.pid}, every=0.05)
        time.sleep(60)
        """,
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    child = fork("ranklike", [], env, str(tmp_path), tmp_path / "r.log", tmp_path / "r.exit")
    time.sleep(1.0)
    assert child.poll() is None, (tmp_path / "r.log").read_text()  # the parent lives: so does the child
    parent.kill()
    parent.wait()
    assert child.wait(10) == -signal.SIGKILL


def test_a_child_whose_status_nobody_recorded_is_reported_lost(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert Forked(gone.pid, tmp_path / "never.exit").poll() == LOST


def _servers() -> list[psutil.Process]:
    me = psutil.Process()
    return [p for p in me.children(recursive=True) if "llmcheck.isolation.forkserver" in " ".join(p.cmdline())]


WATCH = """
import json, psutil
def pytest_runtest_setup(item):
    me = psutil.Process()
    servers = [p.pid for p in me.children(recursive=True) if "llmcheck.isolation.forkserver" in " ".join(p.cmdline())]
    with open("servers.jsonl", "a") as f:
        f.write(json.dumps(servers) + "\\n")
"""


def test_the_distributed_ranks_are_forked_when_the_session_selects_the_check(pytester, run_llmcheck):
    pytester.makeconftest(WATCH)
    r = run_llmcheck(CLEAN, "-k", "distributed or eval").by_check["distributed"]
    assert r["status"] == "passed", r["message"]
    assert r["metrics"]["ranks_started_by"] == "forkserver"
    assert max(p["joined"] for p in r["metrics"]["phases_s"]) < 2.0  # torch and dynamo were imported ahead
    # the conftest's probe saw the server while each item ran (it is the probe the next test trusts)
    assert [bool(json.loads(line)) for line in (pytester.path / "servers.jsonl").read_text().splitlines()] == [
        True,
        True,
    ]
    assert not _servers()  # stopped with the session


def test_without_the_server_the_ranks_are_new_interpreters_and_the_verdict_is_the_same(run_llmcheck, monkeypatch):
    monkeypatch.setenv("LLMCHECK_NO_FORKSERVER", "1")
    r = run_llmcheck(CLEAN, "-k", "distributed").by_check["distributed"]
    assert r["status"] == "passed", r["message"]
    assert r["metrics"]["ranks_started_by"] == "interpreter"


class _Config:
    def __init__(self, **options):
        self.options = {"keyword": "", "markexpr": "", "numprocesses": None, "dist": "no", **options}

    def getoption(self, name, default=None):
        return self.options.get(name, default)


def test_the_server_is_wanted_only_when_a_check_that_preloads_may_run(monkeypatch):
    from llmcheck.plugins.prewarm import wanted
    from llmcheck.plugins.state import State
    from llmcheck.registry import load_checks
    from llmcheck.settings import Layer

    monkeypatch.delenv("LLMCHECK_NO_FORKSERVER", raising=False)
    checks = load_checks()
    modules = checks["distributed"].preload

    def asked(cli=None, **options):
        return wanted(_Config(**options), State(checks, [], Layer("the command line", cli or {}), None))

    assert modules and "torch._dynamo" in modules
    assert asked() == modules  # every check may run
    assert asked(keyword="distributed or eval") == asked(keyword="not distributed") == modules  # -k names it
    assert asked(keyword="eval") == ()  # -k names no check that preloads
    assert asked(markexpr="distributed") == modules and asked(markexpr="compile") == ()
    assert asked({"distributed": False}) == ()  # turned off
    assert asked({"profile": "quick"}) == ()  # quick turns the distributed family off
    assert asked(numprocesses=2) == () and asked(dist="loadfile") == ()  # xdist: not there
    monkeypatch.setenv("LLMCHECK_NO_FORKSERVER", "1")
    assert asked() == ()


def test_a_server_that_no_selected_item_needs_is_stopped_before_the_first_item(pytester, run_llmcheck):
    pytester.makeconftest(WATCH)
    run_llmcheck(CLEAN, "-k", "eval and not distributed")  # names it, selects none of it
    seen = [json.loads(line) for line in (pytester.path / "servers.jsonl").read_text().splitlines()]
    assert seen == [[]]
