"""Hangs found by progress, not only by the clock: a forward that deadlocks is reported by the
progress rule long before the timeout, later checks stuck in the same frame are reported as the
same hang within seconds, and the summary counts them as one problem. A slow step that computes
is never cut."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from model_sources import variant

from llmcheck.isolation.watchdog import History, Rules, Tree, Watch
from llmcheck.target.calls import Heartbeat

DEADLOCKS_ON_4TH_CALL = "import threading\nLOCK = threading.Lock()\n" + variant(
    "    def forward(self, idx):\n",
    "    def forward(self, idx):\n"
    "        self.calls = getattr(self, 'calls', 0) + 1\n"
    "        if self.calls == 4:\n"
    "            LOCK.acquire()\n"
    "            LOCK.acquire()  # the 4th call on a model never returns\n",
)


def test_a_deadlock_is_reported_by_progress_then_as_the_same_hang_and_summarised_once(run_llmcheck):
    result = run_llmcheck(
        DEADLOCKS_ON_4TH_CALL,
        "-k",
        "causal or eval or resume",
        "--llmcheck-timeout",
        "240",
        "--llmcheck-set",
        "hang_floor_s=3",
    )
    lines = textwrap.dedent(DEADLOCKS_ON_4TH_CALL).splitlines()
    line = next(i for i, text in enumerate(lines, 1) if "never returns" in text)
    records = [result.by_check[c] for c in ("causal", "eval", "resume")]
    assert [r["status"] for r in records] == ["timeout"] * 3, [r["message"] for r in records]
    first, *later = records
    assert first["message"].startswith("hang: no progress for "), first["message"]
    assert f"stuck at model.py:{line} in forward" in first["message"]
    assert "last model call: forward #" in first["message"] and "not returned" in first["message"]
    assert first["metrics"]["fault"]["rule"] == "progress"
    assert first["duration_s"] < 120  # the timeout is 240 s; the floor 3 s (generous: a loaded machine)
    for r in later:
        assert r["message"].startswith(f"hang: the same hang as in causal: stuck at model.py:{line} in forward")
        assert r["metrics"]["fault"] == {**r["metrics"]["fault"], "rule": "same_hang", "same_as": "causal"}
        assert 'model.py", line' in r["trace"]
    result.stdout.fnmatch_lines([f"1 hang at model.py:{line} in forward, seen in 3 checks (causal, eval, resume)"])


def _watch(root: int, beat: Heartbeat, floor: float = 1.0) -> Watch:
    return Watch(Rules(None, 0.0, 20.0, floor), Tree(root), beat, History())


def _poll_for(watch: Watch, seconds: float):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        fired = watch.poll()
        if fired is not None:
            return fired
        time.sleep(0.05)
    return None


def test_the_progress_rule_fires_on_a_quiet_tree_and_never_on_a_busy_one(tmp_path):
    """No progress for the floor: a sleeping process is a hang, a computing one is a slow step."""
    beat = Heartbeat(tmp_path / "beat", create=True)
    for code, hangs in (("import time; time.sleep(60)", True), ("while True: pass", False)):
        parent = subprocess.Popen(["sh", "-c", f"{sys.executable} -c '{code}'; true"], start_new_session=True)
        try:
            beat.reset()
            beat.forward_started()  # a forward that never returns
            fired = _poll_for(_watch(parent.pid, beat), 4.0)
            assert (fired is not None) == hangs, (code, fired)
            if hangs:
                assert fired.rule == "progress" and "hang_floor_s" in fired.message
        finally:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.wait()


def test_outside_the_models_calls_only_the_clock_applies(tmp_path):
    """A factory reading a slow disk, a check waiting on a fresh process: quiet, but not the model."""
    beat = Heartbeat(tmp_path / "beat", create=True)
    for event in (beat.progress, lambda: (beat.forward_started(), beat.forward_ended())):
        beat.reset()
        event()
        parent = subprocess.Popen(["sleep", "60"])
        try:
            assert _poll_for(_watch(parent.pid, beat), 3.0) is None
        finally:
            parent.kill()
            parent.wait()


def test_the_step_time_sets_the_window_above_the_floor(tmp_path):
    beat = Heartbeat(tmp_path / "beat", create=True)
    beat.forward_started()
    time.sleep(0.2)
    beat.forward_ended()  # one step of ~0.2 s: 20x is ~4 s, above the 1 s floor
    beat.forward_started()
    parent = subprocess.Popen(["sleep", "60"])
    try:
        watch = _watch(parent.pid, beat)
        assert _poll_for(watch, 2.0) is None  # past the floor, not past 20x the step
        fired = _poll_for(watch, 8.0)
        assert fired is not None and "x the step time" in fired.message and "(hang_factor)" in fired.message
    finally:
        parent.kill()
        parent.wait()
