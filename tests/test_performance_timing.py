"""The measurement method (llmcheck.measuring.timing) and the pure parts of the performance checks: intervals,
validity, budgets per configuration, the knee. End-to-end runs live in the other test_performance files."""

import time

import pytest

from llmcheck.checks import latency, throughput
from llmcheck.measuring import perf, timing
from llmcheck.settings import Params, SettingsError


def test_the_median_interval_uses_binomial_order_statistics():
    # Standard table values: n=100 at 95 % -> 40th and 61st order statistics (1-based).
    assert timing.median_ci(list(range(1, 101)), 0.95) == (40, 61)
    assert timing.median_ci(list(range(1, 7)), 0.95) == (1, 6)  # n=6 is the smallest n with a 95 % interval
    assert timing.median_ci(list(range(1, 6)), 0.95) is None


def test_percentiles_need_the_sample_counts_mlperf_uses():
    assert timing.min_samples_for(0.90) == 44
    assert timing.min_samples_for(0.99) == 459
    stats = timing.summarize([1.0] * 43, 0.95)
    assert stats["p90_ms"] is None and stats["p90_note"] == "p90 not reported: n=43 < 44 samples"
    assert timing.summarize([1.0] * 44, 0.95)["p90_ms"] == 1.0


def test_a_sleep_is_measured_as_slower_than_no_sleep_and_warm_up_is_reported():
    plan = timing.Plan(max_time_s=0.2, min_samples=5, max_samples=30, warmup_iters=2, warmup_s=0)
    quick = timing.sample(lambda: None, plan)
    slow = timing.sample(lambda: time.sleep(0.005), plan)
    assert slow.median_ms >= 5.0 > quick.median_ms
    assert slow.warmup["iters"] >= 2 and slow.warmup["first_call_ms"] >= 5.0
    assert quick.stop in ("precision", "max_samples", "time") and quick.threads >= 1
    assert len(slow.samples_ms) == slow.stats["n"]


def test_too_few_samples_or_too_much_noise_make_a_measurement_invalid():
    few = timing.sample(lambda: time.sleep(0.02), timing.Plan(max_time_s=0.03, warmup_iters=0, warmup_s=0))
    assert not few.valid and "only" in few.reasons[0] and few.stop == "time"
    noisy = timing.Measurement([1.0, 1.0, 1.0, 3.0, 3.0, 3.0] * 3, "perf_counter", 1, {}, "time", timing.Plan())
    assert not noisy.valid and "too noisy" in noisy.reasons[0]


def test_the_speedup_interval_brackets_the_ratio_of_medians():
    ratio, lo, hi = timing.ratio_ci([2.0, 2.1, 1.9] * 10, [1.0, 1.05, 0.95] * 10)
    assert lo <= ratio <= hi and ratio == pytest.approx(2.0)


def test_samples_convert_to_a_torch_benchmark_measurement():
    m = timing.Measurement([1.0, 2.0, 3.0], "perf_counter", 2, {}, "time", timing.Plan())
    tm = timing.to_torch_measurement(m, "forward", "bs=1")
    assert tm.median == pytest.approx(2e-3) and tm.task_spec.num_threads == 2


def _params(**values):
    spec = latency.CHECK.params
    return Params({**{k: v.default for k, v in spec.items()}, **values})


def test_budgets_apply_per_configuration_and_the_most_specific_selector_wins():
    p = _params(max_p50_ms=50.0, budgets={"bs=8": {"max_p50_ms": 20}, "bs=8-bfloat16": {"max_p50_ms": 10}})
    cfg = {"bs": 8, "sl": 16, "precision": "bfloat16", "mode": "eager"}
    assert perf.budgets_for(p, cfg, latency.BUDGETS) == {"max_p50_ms": 10.0}
    assert perf.budgets_for(p, {**cfg, "precision": "float32"}, latency.BUDGETS) == {"max_p50_ms": 20.0}
    assert perf.budgets_for(p, {**cfg, "bs": 1}, latency.BUDGETS) == {"max_p50_ms": 50.0}


def test_an_unknown_budget_name_is_an_error_that_lists_the_valid_ones():
    with pytest.raises(SettingsError, match="unknown budget 'max_p95_ms'.*max_p50_ms"):
        perf.budgets_for(_params(budgets={"bs=1": {"max_p95_ms": 3}}), {"bs": 1}, latency.BUDGETS)


def _latency_metrics(valid: bool, budgets: dict) -> dict:
    series = timing.Measurement(
        [1.0] * 20 if valid else [1.0] * 3, "perf_counter", 1, {}, "time", timing.Plan()
    ).to_metrics()
    series["tokens_per_s"] = 16000.0
    return {
        "config": {"bs": 1, "sl": 16, "precision": "float32", "mode": "eager"},
        "batch_size": 1,
        "seq_len": 16,
        "budgets": budgets,
        "threads": 1,
        "forward": series,
        "memory": {"peak_memory_mb": 300.0, "memory_kind": "cpu process RSS"},
        "generation": None,
        "generation_note": "no cache",
    }


def test_the_judge_never_passes_a_budget_on_an_invalid_measurement():
    p = _params()
    verdict = latency.judge(_latency_metrics(False, {"max_p50_ms": 1e9}), p)
    assert verdict.status == "failed" and "invalid" in verdict.message and "cannot pass" in verdict.message
    unbudgeted = latency.judge(_latency_metrics(False, {}), p)
    assert unbudgeted.status == "passed" and "[invalid: only 3 samples" in unbudgeted.message
    assert latency.judge(_latency_metrics(True, {"max_p50_ms": 1e9}), p).status == "passed"


def test_the_knee_is_the_smallest_batch_reaching_the_fraction_of_the_best_throughput():
    def pt(bs, tps):
        return {"batch_size": bs, "inference": {"tokens_per_s": tps, "median_ms": bs / tps * 1e3, "valid": True}}

    points = [pt(1, 100.0), pt(2, 190.0), pt(4, 300.0), pt(8, 320.0), pt(16, 330.0)]
    k = throughput.knee(points, "inference", 0.9)
    assert (k["batch_size"], k["peak_batch_size"], k["at_largest"]) == (4, 16, False)
    rising = throughput.knee([pt(1, 100.0), pt(2, 200.0), pt(4, 400.0)], "inference", 0.9)
    assert rising["batch_size"] == 4 and rising["at_largest"]
