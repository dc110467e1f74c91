"""pytest-benchmark bridge: every timed series a check records (raw samples named ``*_ms``) also
lands in pytest-benchmark's session as one benchmark, so ``--benchmark-json``, ``--benchmark-save``,
``--benchmark-compare`` and ``--benchmark-compare-fail`` work on llmcheck's measurements.

How, from pytest-benchmark 5's source: its session is the plugin registered as
``"pytest-benchmark"`` (a ``BenchmarkSession``); in ``pytest_sessionfinish`` it saves, compares and
later displays ``session.benchmarks``, a list of ``stats.Metadata``. Its fixture builds each
``Metadata(fixture, iterations, options)`` and feeds it durations with ``update``. We do the same
from a record's raw samples, with a small stand-in for the fixture (the attributes ``Metadata``
reads), in ``pytest_runtest_logreport`` on the controller: records travel on the reports, so this
also works under xdist, though pytest-benchmark disables itself there (``--benchmark-disable``
too), and then nothing is added. The entries are llmcheck's samples, not re-timed: one call per
sample (``iterations`` 1), in seconds as pytest-benchmark expects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from llmcheck.plugins.report_writer import RECORD_ATTR

SESSION_PLUGIN = "pytest-benchmark"  # the name pytest-benchmark registers its BenchmarkSession under
WANTED_BY = (
    "benchmark_json",
    "benchmark_save",
    "benchmark_autosave",
    "benchmark_compare",
    "benchmark_compare_fail",
    "benchmark_histogram",
)
OPTIONS = {"timer": "llmcheck.measuring.timing (perf_counter, or CUDA events)", "source": "llmcheck raw samples"}


@dataclass
class _Source:
    """The fixture attributes ``pytest_benchmark.stats.Metadata`` reads."""

    name: str
    fullname: str
    group: str
    param: str | None
    params: dict[str, Any] | None
    extra_info: dict[str, Any] = field(default_factory=dict)
    cprofile_stats: Any = None
    has_error: bool = False


def entries(record: dict[str, Any]) -> list:
    """One ``Metadata`` per ``*_ms`` sample series of an llmcheck result record."""
    from pytest_benchmark.stats import Metadata

    item = record["id"].rsplit("::", 1)[-1]  # latency[bs=8-sl=16-bfloat16-eager]
    check, _, param = item.partition("[")
    metrics = record.get("metrics") or {}
    found = []
    for series, values in (record.get("samples") or {}).items():
        if not series.endswith("_ms") or not values:
            continue
        label = series[: -len("_ms")]
        extra = {
            "llmcheck_status": record["status"],
            "model": record.get("model"),
            "check": record.get("check"),
            "valid": (metrics.get("validity") or {}).get(series),
        }
        source = _Source(
            name=f"{item}::{label}",
            fullname=f"{record['id']}::{label}",
            group=f"llmcheck {record.get('model')}::{check}",
            param=param.rstrip("]") or None,
            params=metrics.get("config"),
            extra_info=extra,
        )
        meta = Metadata(source, iterations=1, options=OPTIONS)
        for ms in values:
            meta.update(ms / 1e3)
        found.append(meta)
    return found


class BenchmarkBridge:
    """Adds llmcheck's timed series to pytest-benchmark's session as items finish."""

    def __init__(self, config: pytest.Config):
        self.config = config

    def wanted(self) -> bool:
        """Only when the user asked pytest-benchmark for an output: otherwise every llmcheck run
        would end with pytest-benchmark's wide table, which the llmcheck report already covers."""
        return any(self.config.getoption(name, None) for name in WANTED_BY)

    def session(self):
        if not self.wanted():
            return None
        found = self.config.pluginmanager.get_plugin(SESSION_PLUGIN)
        if found is None or getattr(found, "disabled", True) or not hasattr(found, "benchmarks"):
            return None
        return found

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        record = getattr(report, RECORD_ATTR, None)
        if record is None or report.when != "call" or not record.get("samples"):
            return
        session = self.session()
        if session is not None:
            session.benchmarks.extend(entries(record))


def register(config: pytest.Config) -> None:
    """Install the bridge (on the controller); it does nothing when pytest-benchmark is absent."""
    config.pluginmanager.register(BenchmarkBridge(config), "llmcheck-benchmark-bridge")
