"""Nothing a model starts outlives its worker: a ``setsid`` child, a double-forked daemon and a
grandchild that ignores SIGTERM are all gone after a check that timed out and after the session,
and processes that are not the worker's are left alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
from model_sources import variant

from llmcheck.isolation import reaper

DAEMON = """
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        with open(sys.argv[1], "a") as f:
            f.write(f"daemon {os.getpid()}\\n")
        time.sleep(600)
    os._exit(0)
os._exit(0)
"""

STUBBORN = """
import os, signal, subprocess, sys, time
grandchild = (
    "import os, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "open(sys.argv[1], 'a').write(f'stubborn {os.getpid()}\\\\n'); time.sleep(600)"
)
subprocess.Popen([sys.executable, "-c", grandchild, sys.argv[1]]).wait()
"""

ESCAPES = f"""
import os, subprocess, sys, time
from pathlib import Path

PIDS = Path(__file__).with_name("pids.txt")
DAEMON = {DAEMON!r}
STUBBORN = {STUBBORN!r}
STARTED = []


def escape():
    if STARTED:
        return
    STARTED.append(True)
    child = subprocess.Popen(["sleep", "600"], start_new_session=True)
    with open(PIDS, "a") as f:
        f.write(f"setsid {{child.pid}}\\n")
    subprocess.run([sys.executable, "-c", DAEMON, str(PIDS)])
    STARTED.append(subprocess.Popen([sys.executable, "-c", STUBBORN, str(PIDS)]))
    deadline = time.monotonic() + 60
    while len(PIDS.read_text().splitlines()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
"""


def escaping_model(then: str = "") -> str:
    """The clean model, whose first eval-mode forward starts the three escapees (then ``then``)."""
    source = variant(
        "    def forward(self, idx):\n",
        f"    def forward(self, idx):\n        if not self.training:\n            escape()\n{then}",
    )
    return ESCAPES + source


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _escapees(path: Path) -> dict[str, int]:
    return {kind: int(pid) for kind, pid in (line.split() for line in path.read_text().splitlines())}


def _assert_all_gone(pids: dict[str, int], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while any(_running(p) for p in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert {k: p for k, p in pids.items() if _running(p)} == {}


def test_escaped_processes_die_with_the_worker_at_the_end_of_the_session(run_llmcheck, pytester):
    bystander = subprocess.Popen(["sleep", "60"])  # the pytest process's own child: never the worker's
    try:
        before = {p.pid for p in psutil.Process().children(recursive=True)}
        result = run_llmcheck(escaping_model(), "-k", "eval")
        assert result.by_check["eval"]["status"] == "passed", result.by_check["eval"]["message"]
        pids = _escapees(pytester.path / "pids.txt")
        assert set(pids) == {"setsid", "daemon", "stubborn"}
        _assert_all_gone(pids)
        assert _running(bystander.pid)
        after = {p.pid for p in psutil.Process().children(recursive=True)}
        assert after - before == set(), "the session left processes (or unreaped zombies) below pytest"
    finally:
        bystander.kill()
        bystander.wait()


def test_escaped_processes_die_when_their_check_times_out(run_llmcheck, pytester):
    source = escaping_model("            time.sleep(600)\n")
    result = run_llmcheck(source, "-k", "eval", "--llmcheck-timeout", "8")
    assert result.by_check["eval"]["status"] == "timeout"
    _assert_all_gone(_escapees(pytester.path / "pids.txt"))


def test_the_reaper_adopts_kills_and_reaps_a_daemon_and_reports_the_workers_exit(tmp_path):
    """The reaper alone, without torch: a 'worker' that starts a daemon and exits with status 3."""
    pids = tmp_path / "pids.txt"
    worker = f"import subprocess, sys, time; subprocess.run([sys.executable, '-c', {DAEMON!r}, {str(pids)!r}]); "
    worker += f"time.sleep(1); import os; os._exit(3) if os.path.exists({str(pids)!r}) else os._exit(9)"
    out_r, out_w = os.pipe()
    cmd_r, cmd_w = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-S", reaper.__file__, str(out_w), str(cmd_r), "--", sys.executable, "-c", worker],
        pass_fds=(out_w, cmd_r),
    )
    os.close(out_w)
    os.close(cmd_r)
    with os.fdopen(out_r) as out:
        lines = [json.loads(line) for line in out]
    proc.wait(timeout=30)
    os.close(cmd_w)
    assert lines[0]["op"] == "spawned" and lines[0]["subreaper"] is True
    assert lines[-1] == {"op": "exited", "returncode": 3}
    daemon = _escapees(pids)["daemon"]
    assert not psutil.pid_exists(daemon), "the daemon outlived the reaper (or was left a zombie)"


def test_a_model_that_kills_its_parent_kills_the_reaper_and_is_crashed_naming_it(run_llmcheck, pytester):
    source = variant(
        "    def forward(self, idx):\n",
        "    def forward(self, idx):\n"
        "        if not self.training:\n"
        "            import os, signal\n"
        "            Path(__file__).with_name('worker.pid').write_text(str(os.getpid()))\n"
        "            os.kill(os.getppid(), signal.SIGKILL)\n"
        "            time.sleep(600)\n",
    )
    result = run_llmcheck("import time\nfrom pathlib import Path\n" + source, "-k", "eval or resume")
    record = result.by_check["eval"]
    assert record["status"] == "crashed"
    assert record["message"].startswith("worker's reaper process died with signal SIGKILL during run")
    _assert_all_gone({"worker": int((pytester.path / "worker.pid").read_text())})
    assert result.by_check["resume"]["status"] == "passed"
