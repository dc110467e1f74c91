"""`llmcheck compare` with per-process medians: run-to-run drift between stored runs is not a
regression, a real shift with tight processes is, and runs whose processes disagree by more than
the minimum effect are flagged as too noisy to compare. Reports without per-process data compare
as before. The records are synthetic, shaped like the latency check's (llmcheck.isolation.processes)."""

from __future__ import annotations

import copy
import random

from report_data import document, latency

from llmcheck import cli
from llmcheck.reports import compare, markdown
from llmcheck.stats import spread
from llmcheck.stats.significance import process_shift

DRIFTING = [1.70, 1.78, 1.86]  # 9% apart: the six-run drift measured on this machine (docs/design.md §4)
TIGHT = [1.000, 1.004, 1.008]


def spread_record(medians: list[float], n: int = 100, seed: int = 0) -> dict:
    """A latency record measured in len(medians) processes, each tight (±1%) around its median."""
    rng = random.Random(seed)
    per_process = [[m * (1 + rng.gauss(0, 0.01)) for _ in range(n)] for m in medians]
    rec = latency(1, statistics_median(per_process), n=n * len(medians), seed=seed)
    rec["samples"]["forward_ms"] = [x for p in per_process for x in p]
    rec["metrics"]["processes"] = {
        "requested": len(medians),
        "measured": len(medians),
        "note": "",
        "series": {"forward_ms": spread.series_spread(per_process)},
    }
    return rec


def statistics_median(per_process: list[list[float]]) -> float:
    import statistics

    return statistics.median(x for p in per_process for x in p)


def samples_row(base: dict, head: dict, rules: compare.Rules | None = None) -> tuple[dict, dict]:
    result = compare.compare(document([base]), document([head]), rules)
    return next(r for r in result["rows"] if r["kind"] == "samples"), result


def test_an_eight_percent_drift_within_a_nine_percent_process_spread_is_not_a_regression_and_is_flagged_noisy():
    base = spread_record(DRIFTING, seed=1)
    head = spread_record([m * 1.08 for m in reversed(DRIFTING)], seed=2)
    row, result = samples_row(base, head)
    assert row["p_value"] < 0.01  # the pooled rank test alone would call this drift a regression
    assert row["verdict"] == "inconclusive" and row["noisy"] and result["regressions"] == 0
    assert row["p_processes"] >= 0.01 and abs(row["spread"] - 0.16 / 1.78) < 0.01
    assert (
        f"between-process spread {row['spread']:.1%} exceeds the 5.0% minimum effect: too noisy to compare; "
        "use llmcheck ab" in row["note"]
    )
    assert any("too noisy to compare" in w and "llmcheck ab" in w for w in result["warnings"])


def test_a_thirty_percent_shift_with_tight_processes_is_a_regression():
    base = spread_record(TIGHT, seed=3)
    head = spread_record([m * 1.30 for m in TIGHT], seed=4)
    row, result = samples_row(base, head)
    assert row["verdict"] == "regression" and result["regressions"] == 1 and not row["noisy"]
    assert row["p_processes"] < 0.01 and row["processes"] == [3, 3]
    assert "Welch p =" in row["note"] and "on 3 vs 3 process medians" in row["note"]


def test_a_thirty_percent_faster_head_with_tight_processes_is_an_improvement():
    row, _ = samples_row(spread_record(TIGHT, seed=5), spread_record([m / 1.30 for m in TIGHT], seed=6))
    assert row["verdict"] == "improvement" and row["change"] < 0


def test_a_shift_significant_in_pooled_samples_but_not_across_tight_processes_is_within_noise():
    base = [1.00, 1.02, 1.04]  # 4% spread: below the 5% minimum effect, so comparable
    row, result = samples_row(spread_record(base, seed=7), spread_record([m * 1.06 for m in reversed(base)], seed=8))
    assert row["p_value"] < 0.01 and row["p_processes"] >= 0.01
    assert row["verdict"] == "within noise" and not row["noisy"] and result["regressions"] == 0
    assert "not significant across processes" in row["note"] and "drift" in row["note"]


def test_a_whole_run_on_a_slower_machine_is_drift_when_the_calibration_moved_with_it():
    # Seen on this machine: every process of one run at 3.24 ms, of the next at 1.74 ms, each run tight.
    base, head = spread_record(TIGHT, seed=3), spread_record([m * 1.30 for m in TIGHT], seed=4)
    base["metrics"]["calibration_ms"], head["metrics"]["calibration_ms"] = 0.40, 0.52  # the machine, +30%
    row, result = samples_row(base, head)
    assert row["verdict"] == "inconclusive" and row["noisy"] and result["regressions"] == 0
    assert "the machine itself ran slower in HEAD's run: the calibration workload" in row["note"]
    assert "0.4 -> 0.52 ms (+30.0%, beyond 5.0%)" in row["note"]
    head["metrics"]["calibration_ms"] = 0.41  # the machine as fast as before: the model got slower
    row, result = samples_row(base, head)
    assert row["verdict"] == "regression" and result["regressions"] == 1


def test_a_metric_threshold_is_not_breached_by_a_slower_machine():
    base, head = spread_record(TIGHT, seed=3), spread_record([m * 1.30 for m in TIGHT], seed=4)
    rules = compare.Rules(thresholds=[compare.Threshold.parse("latency.median_ms:+10%")])
    assert compare.compare(document([base]), document([head]), rules)["regressions"] >= 1
    base["metrics"]["calibration_ms"], head["metrics"]["calibration_ms"] = 0.40, 0.52
    result = compare.compare(document([base]), document([head]), rules)
    metric = [r for r in result["rows"] if r["kind"] == "metric" and r["verdict"] != "changed"]
    assert metric and all(r["verdict"] == "inconclusive" and "calibration workload" in r["note"] for r in metric)
    assert result["regressions"] == 0


def test_no_change_between_noisy_runs_is_inconclusive_not_unchanged():
    row, _ = samples_row(spread_record(DRIFTING, seed=9), spread_record(DRIFTING, seed=10))
    assert row["verdict"] == "inconclusive" and row["noisy"]


def test_no_change_between_tight_runs_is_unchanged_with_the_spread_in_the_note():
    row, _ = samples_row(spread_record(TIGHT, seed=11), spread_record(TIGHT, seed=12))
    assert row["verdict"] == "unchanged" and f"between-process spread {row['spread']:.1%}" in row["note"]
    assert row["spread"] < 0.02


def test_reports_without_per_process_data_compare_as_before():
    base, head = spread_record(DRIFTING, seed=1), spread_record([m * 1.08 for m in reversed(DRIFTING)], seed=2)
    for rec in (base, head):
        del rec["metrics"]["processes"]
    row, result = samples_row(base, head)
    assert (
        row["verdict"] == "regression" and "spread" not in row and "noisy" not in row
    )  # the pooled rank test, as today
    assert result["regressions"] == 1 and not any("too noisy" in w for w in result["warnings"])
    one_side = spread_record(DRIFTING, seed=1)  # per-process data on one side only: judged as before too
    row, _ = samples_row(one_side, head)
    assert row["verdict"] == "regression" and "spread" not in row


def test_a_metric_threshold_is_confirmed_only_across_processes():
    rules = compare.Rules(thresholds=[compare.Threshold.parse("latency.p50:+5%")])
    base = spread_record(DRIFTING, seed=1)
    head = spread_record([m * 1.08 for m in reversed(DRIFTING)], seed=2)
    result = compare.compare(document([base]), document([head]), rules)
    metric = next(r for r in result["rows"] if r["kind"] == "metric" and r["name"] == "forward.median_ms")
    assert metric["verdict"] == "inconclusive" and "too noisy to compare" in metric["note"]
    assert result["regressions"] == 0
    tight = compare.compare(
        document([spread_record(TIGHT, seed=3)]), document([spread_record([m * 1.30 for m in TIGHT], seed=4)]), rules
    )
    metric = next(r for r in tight["rows"] if r["kind"] == "metric" and r["name"] == "forward.median_ms")
    assert metric["verdict"] == "regression" and "Welch p" in metric["note"]


def test_terminal_and_markdown_show_the_too_noisy_row():
    base = spread_record(DRIFTING, seed=1)
    head = spread_record([m * 1.08 for m in reversed(DRIFTING)], seed=2)
    result = compare.compare(document([base]), document([head]))
    text = cli.table(result)
    assert "inconclusive" in text and "too noisy to compare; use llmcheck ab" in text
    md = markdown.comparison(result)
    assert "inconclusive" in md and "too noisy to compare" in md


def test_compare_leaves_the_documents_untouched():
    base, head = document([spread_record(DRIFTING, seed=1)]), document([spread_record(TIGHT, seed=2)])
    before = copy.deepcopy((base, head))
    compare.compare(base, head)
    assert (base, head) == before


def test_process_shift_needs_two_processes_a_side_and_handles_identical_medians():
    assert process_shift([1.0], [1.0, 1.1]) is None and process_shift([1.0, 1.0], [0.0, 1.0]) is None
    same = process_shift([1.0, 1.0], [1.0, 1.0])
    assert same.p_value == 1.0 and same.spread == 0.0 and same.change == 0.0
    apart = process_shift([1.0, 1.0], [1.2, 1.2])
    assert apart.p_value == 0.0 and abs(apart.change - 0.2) < 1e-12
