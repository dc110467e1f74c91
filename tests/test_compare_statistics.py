"""The significance rule of `llmcheck compare` on recorded timings: noise is not a regression, a real
slowdown is. The samples in tests/data/recorded_forward_ms.json are forward passes of the tests'
tiny model timed in separate processes (recorded by benchmarks/compare_sensitivity.py --record)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from report_data import document, record

from llmcheck.reports import compare

RUNS = json.loads((Path(__file__).parent / "data" / "recorded_forward_ms.json").read_text())["processes"]


def verdict(base: list[float], head: list[float], **rules) -> dict:
    result = compare.compare(
        document([record("latency", samples={"forward_ms": base})]),
        document([record("latency", samples={"forward_ms": head})]),
        compare.Rules(**rules),
    )
    return next(r for r in result["rows"] if r["kind"] == "samples")


def draws(trials: int, n: int, seed: int = 0):
    """Pairs of disjoint random draws of n samples from one recorded process."""
    rng = random.Random(seed)
    for _ in range(trials):
        both = rng.sample(rng.choice(RUNS), 2 * n)
        yield both[:n], both[n:]


def test_the_recording_has_enough_processes_and_samples():
    assert len(RUNS) >= 4 and min(len(r) for r in RUNS) >= 2000


@pytest.mark.parametrize("n", [10, 30, 100])
def test_repeated_a_a_comparisons_raise_under_one_percent_false_alarms(n):
    trials = 500
    alarms = sum(verdict(a, b)["verdict"] == "regression" for a, b in draws(trials, n, seed=n))
    assert alarms / trials < 0.01, f"{alarms} false alarms in {trials} A/A comparisons of {n} samples"


def test_an_injected_ten_percent_slowdown_with_enough_samples_is_a_regression():
    # The recording comes from a busy shared machine: heavy tails and bursts, so "enough" is many.
    trials = 100
    caught = [verdict(a, [v * 1.10 for v in b]) for a, b in draws(trials, 1000, seed=1)]
    rate = sum(r["verdict"] == "regression" for r in caught) / trials
    assert rate >= 0.85, f"only {rate:.0%} of 10% slowdowns caught with 1000 samples a side"
    assert all(r["change"] > 0 for r in caught if r["verdict"] == "regression")


def test_a_ten_percent_speedup_is_an_improvement_not_a_regression():
    a, b = next(draws(1, 1000, seed=2))
    row = verdict(a, [v / 1.10 for v in b])
    assert row["verdict"] == "improvement" and row["change"] < 0


def test_a_significant_shift_below_the_minimum_effect_is_not_a_regression():
    a, b = next(draws(1, 1000, seed=3))
    row = verdict(a, [v * 1.03 for v in b], min_effect=0.05)
    assert row["verdict"] in ("unchanged", "within noise") and "+5%" in row["threshold"]


def test_a_large_shift_on_too_few_samples_is_inconclusive_not_unchanged():
    row = verdict([1.0, 1.1, 1.05], [2.0, 2.1, 2.2])
    assert row["verdict"] == "inconclusive"
    assert "too few samples (3 vs 3): the smallest attainable p is 0.1 >= alpha 0.01" in row["note"]
    assert verdict([1.0, 1.1, 1.05], [1.0, 1.1, 1.06])["verdict"] == "unchanged"
