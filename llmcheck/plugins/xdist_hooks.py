"""pytest-xdist hooks of the controller, registered only when xdist is present (as pytest's docs
advise for optional plugins' hooks).

- ``pytest_configure_node`` hands every worker the folder of the run's scheduling locks
  (plugins/scheduling.py), so timing checks run alone across workers.
- ``pytest_handlecrashitem``: when a worker *pytest* process dies (an OOM kill, a model that kills
  its parent), xdist reports the item it was running as failed with no llmcheck record, which
  would leave the item out of the JSON and HTML reports. The record made here keeps it there, as
  ``crashed``, naming the xdist worker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llmcheck.plugins.report_writer import RECORD_ATTR
from llmcheck.plugins.scheduling import WORKERINPUT_KEY
from llmcheck.results import Result


class XdistHooks:
    def __init__(self, checks: dict, slots_dir: Path):
        self.checks = checks
        self.slots_dir = slots_dir

    @pytest.hookimpl
    def pytest_configure_node(self, node) -> None:
        node.workerinput[WORKERINPUT_KEY] = str(self.slots_dir)

    @pytest.hookimpl
    def pytest_handlecrashitem(self, crashitem: str, report: pytest.TestReport, sched) -> None:
        node = getattr(report, "node", None)
        worker = getattr(getattr(node, "gateway", None), "id", "?")
        record = crash_record(crashitem, worker, self.checks)
        if record is not None:
            setattr(report, RECORD_ATTR, record)


def crash_record(nodeid: str, worker: str, checks: dict) -> dict[str, Any] | None:
    """The record of an llmcheck item whose xdist worker died (None for other tests' items)."""
    parts = nodeid.split("::")
    if len(parts) != 3:
        return None
    check = checks.get(parts[2].split("[", 1)[0])
    if check is None:
        return None
    message = (
        f"pytest-xdist worker {worker} crashed while running this check: the pytest process died "
        "(killed by a signal or the OOM killer), so no result came back; the llmcheck worker under it "
        "stops when it sees its parent gone. Rerun it alone to see how it ends: "
        f"pytest --llmcheck {parts[0]} -k '{parts[2]}'"
    )
    return {
        **Result("crashed", message).to_json(),
        "id": nodeid,
        "file": parts[0],
        "model": parts[1],
        "check": check.name,
        "family": check.family,
        "params": {},
    }
