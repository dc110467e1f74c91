"""The A/B statistics on simulated drifting machines: how often identical versions are called
different (false alarms), and whether a 20 % change is caught, under the engine's stopping rule."""

from __future__ import annotations

import math
import random

import pytest

from llmcheck.stats import ab_intervals as ab_stats

PRECISION, MIN_PAIRS, THRESHOLD = 0.02, 5, 0.05


def simulated_run(
    rng: random.Random,
    change: float,
    max_pairs: int,
    process_spread: float = 0.09,
    noise: float = 0.015,
    outliers: float = 0.05,
) -> ab_stats.Estimate:
    """One A/B run on a simulated shared machine, stopped as llmcheck.ab.engine stops it.

    Each process's median is true_time x machine drift x its own offset x measurement noise:
    - machine drift: a random walk shared by the two processes of a pair (they run back to back),
      wandering tens of percent over a run;
    - per-process offset: uniform within ±``process_spread`` (docs/design.md §4: 9 % between processes);
    - measurement noise: ``noise`` (the standard error of one process's median);
    - with probability ``outliers`` a process shares its core with another job: +30 %.
    """
    drift, ratios = 1.0, []
    est = ab_stats.estimate([])
    while len(ratios) < max_pairs:
        drift *= math.exp(rng.gauss(0, 0.05))

        def process(true_ms: float, drift: float = drift) -> float:
            offset = 1 + rng.uniform(-process_spread, process_spread)
            busy = 1.3 if rng.random() < outliers else 1.0
            return true_ms * drift * offset * busy * math.exp(rng.gauss(0, noise))

        ratios.append(process(1.0 + change) / process(1.0))
        est = ab_stats.estimate(ratios)
        if ab_stats.precise_enough(est, PRECISION, MIN_PAIRS):
            break
    return est


def rate(verdicts: list[str], *wanted: str) -> float:
    return sum(v in wanted for v in verdicts) / len(verdicts)


@pytest.mark.parametrize("max_pairs", [5, 12, 30])
def test_identical_versions_raise_a_false_alarm_in_far_fewer_than_one_run_in_twenty(max_pairs):
    rng = random.Random(max_pairs)
    verdicts = [ab_stats.verdict(simulated_run(rng, 0.0, max_pairs), THRESHOLD) for _ in range(1000)]
    false_alarms = rate(verdicts, "regression", "improvement")
    print(f"A/A, up to {max_pairs} pairs: {false_alarms:.1%} false alarms in 1000 simulated runs")
    assert false_alarms <= 0.01  # the issue asks for at most 1 in 20; the threshold plus the interval give far fewer
    assert rate(verdicts, "no significant change") >= 0.99


def test_even_a_pure_interval_without_the_threshold_covers_the_truth_as_promised():
    rng = random.Random(7)
    runs = [simulated_run(rng, 0.0, 12) for _ in range(1000)]
    covered = sum(r.ci_low <= 1.0 <= r.ci_high for r in runs) / len(runs)
    print(f"coverage of the 95% interval under drift, outliers and the precision stop: {covered:.1%}")
    assert covered >= 0.93  # nominal 95 %; the early stop on a narrow interval may cost a little


@pytest.mark.parametrize("change, expected", [(0.20, "regression"), (-0.20, "improvement")])
def test_a_twenty_percent_change_is_caught_in_nearly_every_run(change, expected):
    rng = random.Random(3)
    verdicts = [ab_stats.verdict(simulated_run(rng, change, 12), THRESHOLD) for _ in range(500)]
    print(f"{change:+.0%}: called {expected} in {rate(verdicts, expected):.1%} of 500 simulated runs of up to 12 pairs")
    assert rate(verdicts, expected) >= 0.9
    assert rate(verdicts, "regression" if expected == "improvement" else "improvement") == 0


def test_a_change_below_the_threshold_is_not_called_even_when_the_interval_excludes_one():
    est = ab_stats.estimate([1.03, 1.031, 1.029, 1.03, 1.032, 1.028])
    assert est.ci_low > 1.0
    assert ab_stats.verdict(est, 0.05) == "no significant change"
    assert "could have detected changes beyond +" in ab_stats.explain(est, 0.05)


def test_the_estimate_is_the_geometric_mean_of_the_pair_ratios_with_a_t_interval():
    from scipy import stats

    ratios = [1.1, 1.2, 1.15, 1.25, 1.18]
    est = ab_stats.estimate(ratios)
    logs = [math.log(r) for r in ratios]
    mean = sum(logs) / len(logs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / (len(logs) - 1))
    h = stats.t.ppf(0.975, 4) * sd / math.sqrt(5)
    assert est.ratio == pytest.approx(math.exp(mean))
    assert (est.ci_low, est.ci_high) == pytest.approx((math.exp(mean - h), math.exp(mean + h)))
    assert est.half_width == pytest.approx(math.expm1(h))


def test_fewer_than_three_pairs_are_inconclusive_and_say_how_to_get_an_answer():
    est = ab_stats.estimate([1.3, 1.31])
    assert ab_stats.verdict(est, 0.05) == "inconclusive"
    assert "raise the budget" in ab_stats.explain(est, 0.05)
    assert ab_stats.detectable(est, 0.05) is None


def test_the_detectable_change_grows_with_the_width_of_the_interval():
    narrow = ab_stats.estimate([1.0, 1.01, 0.99, 1.0, 1.005, 0.995])
    wide = ab_stats.estimate([1.0, 1.1, 0.9, 1.05, 0.95, 1.0])
    assert ab_stats.detectable(narrow, 0.05)[0] < ab_stats.detectable(wide, 0.05)[0]
    slow, fast = ab_stats.detectable(narrow, 0.05)
    assert 0.05 < slow < 0.07 and 0.05 < fast < 0.07
