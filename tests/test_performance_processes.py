"""The latency check spread over several worker processes (llmcheck.isolation.processes): per-process medians
and the between-process spread are recorded, processes=1 measures in the model's worker only, a
budget that leaves no room measures fewer processes and says so, a crash or hang in an extra process
fails the item with its own status, and the merge is pure and torch-free.

Small plans keep these quick: batch 1, float32, 50 ms of sampling per series, one torch thread.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
from model_sources import CLEAN

from llmcheck.checks import latency
from llmcheck.isolation import processes
from llmcheck.measuring import timing
from llmcheck.results import Result
from llmcheck.settings import Params
from llmcheck.stats import spread
from llmcheck.stats.student_t import t_two_sided

SMALL = (
    "-m",
    "performance",
    "--llmcheck-set",
    "throughput=false",
    "--llmcheck-set",
    "amp=false",
    "--llmcheck-set",
    "latency.num_threads=1",
    "--llmcheck-set",
    "latency.batch_sizes=[1]",
    "--llmcheck-set",
    'latency.precisions=["float32"]',
    "--llmcheck-set",
    "latency.max_time_s=0.05",
    "--llmcheck-set",
    "latency.max_iqr_ratio=100",
    "--llmcheck-set",
    "latency.min_valid_samples=3",
    "-rA",
)
ITEM = "latency[bs=1-sl=16-float32-eager]"


def _models(**settings: str) -> str:
    """CLEAN plus one model per keyword, each with its own latency settings."""
    extra = "".join(
        f"\n\n@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T, checks={{'latency': {s}}})\n"
        f"def {name}():\n    return TinyLM()\n"
        for name, s in settings.items()
    )
    return CLEAN + extra


def _record(result, model: str) -> dict:
    return next(r for r in result.report["results"] if r["id"].endswith(f"::{model}::{ITEM}"))


def test_latency_records_one_median_per_process_and_the_between_process_spread(run_llmcheck):
    result = run_llmcheck(
        _models(three="{'processes': 3}", one="{'processes': 1}", tight="{'processes': 3, 'processes_budget_s': 0}"),
        *SMALL,
    )
    three, one, tight = (_record(result, m) for m in ("three", "one", "tight"))
    assert three["status"] == "passed", three["message"]
    series = three["metrics"]["processes"]["series"]["forward_ms"]
    fwd = three["metrics"]["forward"]
    assert three["metrics"]["processes"]["measured"] == 3 and series["processes"] == 3
    assert len(series["medians"]) == 3 and sum(series["sizes"]) == len(three["samples"]["forward_ms"]) == fwd["n"]
    assert series["spread"] == pytest.approx(
        (max(series["medians"]) - min(series["medians"])) / sorted(series["medians"])[1]
    )
    assert fwd["process_medians_ms"] == series["medians"] and fwd["ci_low_ms"] <= fwd["median_ms"] <= fwd["ci_high_ms"]
    assert f"over 3 processes (between-process spread {series['spread']:.1%}" in three["message"]
    speeds = three["metrics"]["calibration_process_ms"]  # the machine's speed, timed in each process
    assert len(speeds) == 3 and all(v > 0 for v in speeds) and three["metrics"]["calibration_ms"] in speeds
    # processes=1: the model's worker only, exactly as before the feature
    assert (
        one["status"] == "passed" and "processes" not in one["metrics"] and "processes" not in one["metrics"]["forward"]
    )
    assert "over" not in one["message"].split(";")[0]
    # no budget for extra processes: measured in one, and the message says why
    assert tight["status"] == "passed" and tight["metrics"]["processes"]["measured"] == 1
    assert "measured in 1 of 3 processes: process 2 would take about" in tight["message"]
    assert "exceed processes_budget_s = 0 s" in tight["message"]


COUNTS_ITS_PROCESSES = """

@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T, checks={{'latency': {{'processes': 3}}}})
def counted():
    import os
    with open({log!r}, "a") as f:
        f.write(f"{{os.getpid()}}\\n")
    return TinyLM()
"""


def test_the_extra_processes_of_a_model_are_kept_across_its_items(run_llmcheck, pytester):
    log = pytester.path / "pids.txt"
    source = CLEAN.replace("@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T)\ndef tiny():", "def tiny():")
    result = run_llmcheck(
        source + COUNTS_ITS_PROCESSES.format(log=str(log)), *SMALL, "--llmcheck-set", "latency.batch_sizes=[1, 2]"
    )
    records = [r for r in result.report["results"] if r["check"] == "latency"]
    assert len(records) == 2 and all(r["metrics"]["processes"]["measured"] == 3 for r in records)
    # two items x three processes, in three processes: the model's worker and two kept extra workers
    assert len(set(log.read_text().split())) == 3


MISBEHAVES_IN_A_SECOND_PROCESS = '''
import os
from pathlib import Path


def second_process(name):
    """True in any process but the first that built this model (its pid is kept in a marker file)."""
    marker = Path({folder!r}) / (name + ".pid")
    if not marker.exists():
        marker.write_text(str(os.getpid()))
    return marker.read_text() != str(os.getpid())


@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T, checks={{"latency": {{"processes": 3}}}})
def crashy():
    if second_process("crashy"):
        os.abort()
    return TinyLM()


@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T, checks={{"latency": {{"processes": 3, "timeout": 8,
                                                                           "processes_budget_s": 60}}}})
def stuck():
    if second_process("stuck"):
        import time
        time.sleep(600)
    return TinyLM()
'''


def test_a_crash_or_hang_in_an_extra_process_fails_the_item_with_its_status(run_llmcheck, pytester):
    source = CLEAN.replace(
        "@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T)\ndef tiny():", "def tiny():"
    )  # only the two misbehaving models
    result = run_llmcheck(source + MISBEHAVES_IN_A_SECOND_PROCESS.format(folder=str(pytester.path)), *SMALL)
    crashy, stuck = _record(result, "crashy"), _record(result, "stuck")
    assert crashy["status"] == "crashed", crashy["message"]
    assert crashy["message"].startswith(
        "process 2 of 3 (another worker, after 1 measured) worker died with signal SIGABRT"
    )
    assert "crashy" in crashy["trace"] and crashy["metrics"]["processes"]["failed"] == {
        "process": 2,
        "status": "crashed",
    }
    assert crashy["metrics"]["forward"]["n"] == len(crashy["samples"]["forward_ms"]) > 0  # process 1's numbers kept
    assert stuck["status"] == "timeout", stuck["message"]
    assert stuck["message"].startswith(
        "process 2 of 3 (another worker, after 1 measured) timed out during run (timeout 8 s)"
    )
    assert "stuck" in stuck["trace"]
    result.assert_outcomes(failed=2, skipped=4)  # throughput and amp turned off


# -- the merge, pure ---------------------------------------------------------------------------------
def _process(median: float, n: int = 40, seed: int = 0, peak: float = 100.0) -> dict:
    import random

    rng = random.Random(seed)
    values = [median * (1 + rng.gauss(0, 0.01)) for _ in range(n)]
    m = timing.Measurement(values, "perf_counter", 1, {"iters": 3}, "time", timing.Plan())
    metrics = {
        "config": {"bs": 1, "sl": 16, "precision": "float32", "mode": "eager"},
        "batch_size": 1,
        "seq_len": 16,
        "device": "cpu",
        "threads": 1,
        "budgets": {"max_p50_ms": 1.3},
        "validity": {"forward_ms": m.valid},
        "setup_s": {},
        "forward": latency._series(m, 16),
        "generation": None,
        "generation_note": "no cache",
        "memory": {"peak_memory_mb": peak, "baseline_memory_mb": 90.0, "memory_kind": "cpu process RSS"},
    }
    return {"metrics": metrics, "samples": {"forward_ms": values}}


def _params(**values) -> Params:
    p = Params({k: v.default for k, v in latency.CHECK.params.items()})
    p.update(timeout=300.0, **values)
    return p


def test_merge_pools_samples_widens_the_ci_and_leaves_its_inputs_alone():
    parts = [_process(1.0, seed=1), _process(1.1, seed=2, peak=120.0), _process(1.2, seed=3)]
    before = copy.deepcopy(parts)
    merged = latency.merge(parts, _params())
    assert parts == before and json.dumps(merged, allow_nan=False)
    fwd = merged["forward"]
    pooled = [x for p in parts for x in p["samples"]["forward_ms"]]
    assert fwd["n"] == 120 and fwd["median_ms"] == timing.summarize(pooled, 0.95)["median_ms"]
    assert fwd["process_medians_ms"] == [
        spread.series_spread([p["samples"]["forward_ms"]])["medians"][0] for p in parts
    ]
    assert fwd["between_spread"] == pytest.approx(0.2 / 1.1, rel=0.05) and fwd["within_iqr_ratio"] < 0.05
    pooled_ci = timing.summarize(pooled, 0.95)
    t_ci = spread.between_ci(fwd["process_medians_ms"], 0.95)
    assert fwd["ci_low_ms"] == min(pooled_ci["ci_low_ms"], t_ci[0]) < pooled_ci["ci_low_ms"]  # widened by the drift
    assert fwd["ci_high_ms"] == max(pooled_ci["ci_high_ms"], t_ci[1]) > pooled_ci["ci_high_ms"]
    assert fwd["tokens_per_s"] == pytest.approx(16 / (fwd["median_ms"] / 1e3))
    assert merged["memory"]["peak_memory_mb"] == 120.0 and merged["memory"]["per_process_peak_mb"] == [
        100.0,
        120.0,
        100.0,
    ]


def test_the_merged_result_is_judged_on_the_merged_numbers():
    parts = [
        Result("passed", "", p["metrics"], p["samples"])
        for p in (_process(1.0, seed=1), _process(1.4, seed=2), _process(1.6, seed=3))
    ]
    assert latency.judge(parts[0].metrics, _params()).status == "passed"  # process 1 alone is within 1.3 ms
    result = processes.merged(latency.CHECK, _params(), parts, 3)  # the pooled median (about 1.4 ms) is not
    assert result.status == "failed" and "p50 latency" in result.message and "> 1.3 ms" in result.message
    assert "; forward measured over 3 processes (between-process spread" in result.message
    assert len(result.samples["forward_ms"]) == 120 and result.metrics["processes"]["measured"] == 3
    assert result.metrics["processes"]["series"]["forward_ms"]["sizes"] == [40, 40, 40]


def test_processes_one_is_never_spread_and_other_checks_are_not_affected():
    first = Result("passed", "ok", {"x": 1.0})
    assert processes.spread_over_processes(latency.CHECK, {}, _params(processes=1), {}, first, None, None) is first
    from llmcheck.registry import load_checks

    gradient = load_checks()["gradient"]
    assert processes.spread_over_processes(gradient, {}, _params(), {}, first, None, None) is first
    skipped = Result("skipped", "no cache")
    assert processes.spread_over_processes(latency.CHECK, {}, _params(), {}, skipped, None, None) is skipped


def test_merging_and_judging_import_no_torch():
    code = (
        "import sys, json; sys.path.insert(0, 'tests'); "
        "from test_performance_processes import _process, _params; "
        "from llmcheck.isolation import processes; from llmcheck.checks import latency; "
        "from llmcheck.results import Result; "
        "r = processes.merged(latency.CHECK, _params(), [Result('passed', '', **_process(1.0 + i / 10, seed=i)) "
        "for i in range(3)], 3); print(r.status); assert 'torch' not in sys.modules, 'torch imported'"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(_root()), check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "passed"  # pooled median about 1.1 ms, within max_p50_ms 1.3


def _root():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("df", [1, 2, 3, 4, 9, 30])
def test_the_t_quantile_matches_scipy(df):
    from scipy.stats import t

    for confidence in (0.5, 0.9, 0.95, 0.99):
        assert t_two_sided(confidence, df) == pytest.approx(t.ppf((1 + confidence) / 2, df), rel=1e-9)
