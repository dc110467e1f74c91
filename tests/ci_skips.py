"""Under ``CI=true`` a test skipped for a missing package fails instead.

CI installs everything the tests need (.ci/run), so such a skip means an install step is missing,
and a green run would hide the untested code. Skips for hardware stay skips: a reason that names
CUDA is never turned into a failure. Loaded by tests/conftest.py; a pytester session loads it with
``-p ci_skips``. A skip for a missing package says so the way these do: pytest.importorskip's
"could not import 'x': No module named 'x'", or a reason naming the install ("pip install ...").
"""

from __future__ import annotations

import os
import re

import pytest

MISSING = re.compile(r"could not import|no module named|not installed|pip install|apt-get install", re.IGNORECASE)


def _reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr  # a skip's is (path, line, "Skipped: reason")
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


def fail_missing_package_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    if os.environ.get("CI") != "true" or not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = _reason(report)
    if MISSING.search(reason) and "cuda" not in reason.lower():
        report.outcome = "failed"
        report.longrepr = f"CI=true: skipped for a missing package, which .ci/run must install: {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    fail_missing_package_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    report = yield  # a module-level pytest.importorskip skips the whole module here
    fail_missing_package_skip(report)
    return report
