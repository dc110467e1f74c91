"""pytest-xdist: ``-n`` spreads llmcheck items over workers, gives the outcomes of a serial run in
one report written by the controller, runs timing checks alone, and reports a crashed worker."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
from model_sources import CLEAN

from llmcheck.plugins.scheduling import overlapping

# A clean model and a broken one in one file, so the outcomes to agree on include failures.
TWO_MODELS = (
    CLEAN
    + """

class Dead(TinyLM):
    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Linear(D, D)


@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T)
def dead():
    return Dead()
"""
)
SELECTION = "eval or (checkpoint and not checkpointing) or gradient or causal"
SMALL_LATENCY = [
    "--llmcheck-set",
    "latency.batch_sizes=[1]",
    "--llmcheck-set",
    'latency.precisions=["float32"]',
    "--llmcheck-set",
    "latency.max_time_s=0.05",
    "--llmcheck-set",
    "latency.processes=1",
]


def _outcomes(result) -> dict[str, str]:
    return {r["id"]: r["status"] for r in result.report["results"]}


def test_n_2_gives_the_outcomes_of_a_serial_run_in_one_report(run_llmcheck, pytester):
    serial = _outcomes(run_llmcheck(TWO_MODELS, "-k", SELECTION))
    (pytester.path / "report.json").unlink()
    spread = run_llmcheck(TWO_MODELS, "-n", "2", "-k", SELECTION, "--llmcheck-html", "report.html", subprocess=True)
    assert _outcomes(spread) == serial
    assert serial["model.py::dead::gradient"] == "failed" and serial["model.py::tiny::gradient"] == "passed"
    assert len(serial) == 8 and spread.report["summary"]["total"] == 8 and not spread.report["interrupted"]
    workers = {r["scheduling"]["worker"] for r in spread.report["results"]}
    assert workers == {"gw0", "gw1"}, workers  # the items were really spread
    assert "dead::gradient" in (pytester.path / "report.html").read_text()
    spread.stdout.fnmatch_lines(["*llmcheck JSON report: report.json*"])


def test_a_timing_check_never_runs_beside_another_item_under_xdist(run_llmcheck, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # torch's own thread count, as a user has it
    result = run_llmcheck(
        CLEAN,
        "-n",
        "2",
        "-k",
        "latency or eval or (checkpoint and not checkpointing) or resume or frozen or causal",
        *SMALL_LATENCY,
        subprocess=True,
    )
    records = result.report["results"]
    assert result.by_check["latency"]["status"] == "passed"
    assert result.by_check["latency"]["scheduling"]["exclusive"] is True
    assert all(r["scheduling"]["exclusive"] is False for r in records if r["check"] != "latency")
    assert all(r["scheduling"]["ended"] >= r["scheduling"]["started"] for r in records)
    assert overlapping(records) == []
    # Ordinary items ran with their share of the cores (two workers, each with torch's one thread a
    # core, oversubscribe them); the timing item, alone on the machine, with torch's own setting.
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    for r in records:
        if r["check"] != "latency":
            assert (r["scheduling"]["share"], r["scheduling"]["torch_threads"]) == (share, share), r["scheduling"]
    latency = result.by_check["latency"]
    assert latency["scheduling"]["share"] is None
    default = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"], capture_output=True, text=True
    )
    assert latency["scheduling"]["torch_threads"] == int(default.stdout)


def test_overlapping_finds_a_timing_item_that_shared_the_machine():
    def rec(name, start, end, exclusive):
        return {"id": name, "scheduling": {"started": start, "ended": end, "exclusive": exclusive}}

    records = [rec("a", 0, 2, False), rec("b", 1, 3, False), rec("lat", 2.5, 4, True), rec("c", 4, 5, False)]
    assert overlapping(records) == [("b", "lat")]  # two ordinary items may overlap; a timing one may not


HOLDER = """
import os, sys, time
from types import SimpleNamespace
from llmcheck.plugins.scheduling import Slots
config = SimpleNamespace(workerinput={"workerid": sys.argv[1], "workercount": 2, "llmcheck_slots": sys.argv[2]})
print("asking", flush=True)
with Slots(config).hold(exclusive=sys.argv[3] == "x") as info:
    print("holding", flush=True)
    if sys.argv[4] == "release":  # until the test says so
        while not os.path.exists(os.path.join(sys.argv[2], "release-" + sys.argv[1])):
            time.sleep(0.01)
    else:
        time.sleep(float(sys.argv[4]))
print(info["started"], info["ended"], info["waited_s"], flush=True)
"""


def test_an_exclusive_slot_waits_for_the_shared_one_and_the_next_shared_waits_for_it(tmp_path):
    def start(worker, mode, hold):
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, worker, str(tmp_path), mode, hold], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout.readline().strip() == "asking"
        return proc

    # Each arrival is ordered by what the processes say, not by how fast they start: under a load
    # of 10 a fixed 0.3 s head start once let the writer arrive after the reader had left.
    reader = start("gw0", "s", "release")
    assert reader.stdout.readline().strip() == "holding"
    writer = start("gw1", "x", "0.5")
    time.sleep(0.5)  # the writer asked just before: it is now queued at the gate, holding it
    late_reader = start("gw2", "s", "0")
    time.sleep(0.5)  # the late reader is now waiting at the gate behind the writer
    (tmp_path / "release-gw0").touch()
    spans = [tuple(map(float, p.communicate(timeout=30)[0].split()[-3:])) for p in (reader, writer, late_reader)]
    (r_start, r_end, _), (w_start, w_end, w_waited), (l_start, _, _) = spans
    assert w_start >= r_end and w_waited > 0  # the timing slot began after the shared one ended
    assert l_start >= w_end  # and a reader arriving while it waited did not jump the queue


KILLS_ITS_XDIST_WORKER = CLEAN.replace(
    "def tiny():\n    return TinyLM()",
    """def tiny():
    import os, signal
    try:
        fd = os.open({marker!r}, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return TinyLM()
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    import psutil
    os.kill(psutil.Process(os.getppid()).ppid(), signal.SIGKILL)  # this xdist worker, the reaper's parent
    import time
    time.sleep(60)  # still "running" when the parent is gone
    return TinyLM()""",
)


def test_a_crashed_xdist_worker_is_reported_as_crashed_and_leaves_no_llmcheck_worker(run_llmcheck, pytester):
    marker = pytester.path / "crashed-once"
    result = run_llmcheck(
        KILLS_ITS_XDIST_WORKER.format(marker=str(marker)),
        "-n",
        "2",
        "-k",
        "eval or (checkpoint and not checkpointing) or resume or causal",
        subprocess=True,
    )
    records = result.report["results"]
    crashed = [r for r in records if r["status"] == "crashed"]
    assert len(crashed) == 1, [(r["id"], r["status"]) for r in records]
    assert "pytest-xdist worker gw" in crashed[0]["message"] and crashed[0]["check"] in {
        "eval",
        "checkpoint",
        "resume",
        "causal",
    }
    assert sorted(r["status"] for r in records) == ["crashed", "passed", "passed", "passed"]
    assert result.report["summary"]["crashed"] == 1
    orphan = int(marker.read_text())
    deadline = time.monotonic() + 10  # the parent watch polls twice a second
    while psutil.pid_exists(orphan) and psutil.Process(orphan).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, f"llmcheck worker {orphan} outlived its crashed xdist worker"
        time.sleep(0.1)
