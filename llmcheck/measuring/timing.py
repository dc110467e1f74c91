"""Timing with statistics: explicit warm-up, adaptive sampling until the median is known well
enough, and a validity verdict, so that a noisy number can never pass a budget.

The method, per series of calls:
1. Warm-up: at least ``warmup_iters`` calls and at least ``warmup_s`` seconds, counted and reported
   (the first call, where lazy initialisation happens, is reported on its own).
2. Sampling: one timed sample per call; from ``min_samples`` on, stop as soon as the
   distribution-free confidence interval of the median (binomial order statistics, as asv does)
   is within ``±target_rel_ci`` of it, or when ``max_time_s`` or ``max_samples`` is reached.
3. Validity: invalid with fewer than ``min_valid_samples`` samples or with IQR/median above
   ``max_iqr_ratio`` (torch.utils.benchmark warns at 10 % and calls 25 % "significant
   environmental influence"). Budgets refuse to pass an invalid measurement.

Why the loop is not ``torch.utils.benchmark.Timer``: Timer times *blocks* of calls (for a 1 ms
call, ``blocked_autorange`` times blocks of 10 to keep timer overhead under 0.1 %), so per-call
percentiles (p90, p99, TTFT tails) are lost; ``adaptive_autorange`` stops on IQR/median rather
than on how precisely the median is known; on CUDA it synchronises the device once per block
instead of timing each call with CUDA events; and it runs on one thread unless told otherwise.
What we take from torch.utils.benchmark: ``set_torch_threads`` for the thread count, and
`to_torch_measurement`, which turns a series into its ``Measurement`` so ``Compare`` can render
llmcheck's numbers next to Timer's (benchmarks/timer_agreement.py checks that the two agree).
Descriptive statistics come from pytest-benchmark's ``Stats``, so llmcheck's metrics and the
entries bridged into pytest-benchmark's JSON (plugins/benchmark_bridge.py) use one quartile method.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any

from llmcheck.registry import Param
from llmcheck.stats.samples import PERCENTILE_CONFIDENCE, median_ci, min_samples_for, summarize  # noqa: F401  (also timing.X)


@dataclass(frozen=True)
class Plan:
    """How one series is sampled; every field is also a check parameter of the same name."""

    warmup_iters: int = 3  # untimed calls before sampling, at least ...
    warmup_s: float = 0.02  # ... and for at least this long (allocator, caches, lazy init)
    min_samples: int = 10  # never stop on precision before this many samples
    max_samples: int = 200
    max_time_s: float = 0.25  # time budget of one series' timed samples
    target_rel_ci: float = 0.03  # stop once the CI of the median is within ±3 % of it
    confidence: float = 0.95  # of that interval
    max_iqr_ratio: float = 0.25  # IQR/median above this: invalid (too noisy to judge)
    min_valid_samples: int = 10  # fewer samples than this: invalid
    num_threads: int = 0  # torch threads while timing; 0 keeps torch's setting
    disable_gc: bool = True  # no garbage collection while timing (young generations collected before)

    @classmethod
    def from_params(cls, p) -> Plan:
        return cls(**{f.name: p[f.name] for f in fields(cls) if f.name in p})


PARAMS: dict[str, Param] = {
    "warmup_iters": Param(int, Plan.warmup_iters, "untimed warm-up calls per series (at least)", minimum=0),
    "warmup_s": Param(float, Plan.warmup_s, "seconds of warm-up per series (at least)", minimum=0),
    "min_samples": Param(int, Plan.min_samples, "samples before the precision stop may end a series", minimum=2),
    "max_samples": Param(int, Plan.max_samples, "most samples per series", minimum=1),
    "max_time_s": Param(
        float, Plan.max_time_s, "time budget of the timed samples of one series, seconds", minimum=0.001
    ),
    "target_rel_ci": Param(
        float, Plan.target_rel_ci, "stop when the CI of the median is within ± this fraction of it", minimum=0
    ),
    "confidence": Param(
        float, Plan.confidence, "confidence level of the interval of the median", minimum=0.5, maximum=0.999
    ),
    "max_iqr_ratio": Param(float, Plan.max_iqr_ratio, "IQR/median above this marks the measurement invalid", minimum=0),
    "min_valid_samples": Param(
        int, Plan.min_valid_samples, "fewer samples than this mark the measurement invalid", minimum=1
    ),
    "num_threads": Param(int, Plan.num_threads, "torch threads while timing (0: torch's setting)", minimum=0),
    "disable_gc": Param(bool, Plan.disable_gc, "pause Python's garbage collector while timing"),
}


def params(**defaults) -> dict[str, Param]:
    """The plan's parameters, with some defaults changed for one check."""
    from dataclasses import replace as with_default

    unknown = set(defaults) - set(PARAMS)
    if unknown:
        raise ValueError(f"not plan parameters: {sorted(unknown)}")
    return {k: with_default(v, default=defaults[k]) if k in defaults else v for k, v in PARAMS.items()}


@dataclass
class Measurement:
    """One timed series: the raw samples, how sampling went, the statistics and the validity."""

    samples_ms: list[float]
    timer: str  # "perf_counter" or "cuda_event"
    threads: int
    warmup: dict[str, float]
    stop: str  # why sampling ended: precision, time or max_samples
    plan: Plan

    def __post_init__(self):
        self.stats = summarize(self.samples_ms, self.plan.confidence)
        self.reasons = invalid_reasons(self.stats, self.plan)
        self.valid = not self.reasons

    @property
    def median_ms(self) -> float:
        return self.stats["median_ms"]

    def to_metrics(self) -> dict[str, Any]:
        return {
            **self.stats,
            "valid": self.valid,
            "invalid_reasons": self.reasons,
            "stop": self.stop,
            "converged": self.stop == "precision",
            "timer": self.timer,
            "threads": self.threads,
            "warmup": self.warmup,
            "target_rel_ci": self.plan.target_rel_ci,
            "confidence": self.plan.confidence,
        }


def invalid_reasons(stats: dict[str, Any], plan: Plan) -> list[str]:
    reasons = []
    if stats["n"] < plan.min_valid_samples:
        reasons.append(
            f"only {stats['n']} samples (need >= {plan.min_valid_samples}; raise max_time_s, now {plan.max_time_s:g} s)"
        )
    elif stats["iqr_ratio"] > plan.max_iqr_ratio:
        reasons.append(f"too noisy: IQR/median = {stats['iqr_ratio']:.0%} > {plan.max_iqr_ratio:.0%}")
    return reasons


@contextmanager
def _gc_paused(pause: bool):
    was = gc.isenabled()
    if pause:
        gc.collect(1)  # the young generations, as torchtitan does: a full collection can take 100s of ms
        gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def sample(
    fn: Callable[[], Any], plan: Plan = Plan(), *, setup: Callable[[], Any] | None = None, device=None
) -> Measurement:
    """Warm up, then time ``fn()`` call by call; ``setup()`` (untimed) runs before every call.

    On CUDA each call is bracketed by a pair of CUDA events and the device is synchronised once
    per chunk of calls, not per call (a per-call synchronise costs microseconds and serialises
    the host with the device); on CPU the clock is ``time.perf_counter``."""
    import torch
    from torch.utils.benchmark.utils.common import set_torch_threads

    cuda = device is not None and torch.device(device).type == "cuda"
    threads = plan.num_threads or torch.get_num_threads()
    with set_torch_threads(threads), _gc_paused(plan.disable_gc):
        warm = _warmup(fn, setup, plan, torch.cuda.synchronize if cuda else None)
        times, stop = (_cuda_loop if cuda else _cpu_loop)(fn, setup, plan)
    return Measurement([t * 1e3 for t in times], "cuda_event" if cuda else "perf_counter", threads, warm, stop, plan)


def _warmup(fn, setup, plan: Plan, sync) -> dict[str, float]:
    clock, first, iters = time.perf_counter, None, 0
    start = clock()
    while iters < plan.warmup_iters or clock() - start < plan.warmup_s:
        if setup is not None:
            setup()
        t0 = clock()
        fn()
        if sync is not None:
            sync()
        first = (clock() - t0) * 1e3 if first is None else first
        iters += 1
    return {"iters": iters, "seconds": clock() - start, "first_call_ms": first}


def _precise(times: list[float], plan: Plan) -> bool:
    ordered = sorted(times)
    ci, med = median_ci(ordered, plan.confidence), statistics.median(ordered)
    return ci is not None and med > 0 and max(med - ci[0], ci[1] - med) <= plan.target_rel_ci * med


def _next_check(n: int) -> int:
    return n + max(5, n // 5)  # geometric: the CI's sort stays well under 1 µs per sample


def _cpu_loop(fn, setup, plan: Plan) -> tuple[list[float], str]:
    clock, times = time.perf_counter, []
    deadline, check_at = clock() + plan.max_time_s, plan.min_samples
    while True:
        if setup is not None:
            setup()
        t0 = clock()
        fn()
        t1 = clock()
        times.append(t1 - t0)
        n = len(times)
        if n >= plan.max_samples:
            return times, "max_samples"
        if t1 >= deadline:
            return times, "time"
        if n >= check_at:
            if _precise(times, plan):
                return times, "precision"
            check_at = _next_check(n)


def _cuda_loop(fn, setup, plan: Plan) -> tuple[list[float], str]:
    import torch

    clock, times, pending, chunk = time.perf_counter, [], [], 1
    deadline, check_at = clock() + plan.max_time_s, plan.min_samples
    while True:
        if setup is not None:
            setup()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        pending.append((start, end))
        if len(pending) < chunk and len(times) + len(pending) < plan.max_samples and clock() < deadline:
            continue
        end.synchronize()
        times.extend(s.elapsed_time(e) / 1e3 for s, e in pending)
        pending.clear()
        chunk = max(1, min(32, int(0.02 / max(statistics.median(times), 1e-6))))  # ~20 ms per sync
        n = len(times)
        if n >= plan.max_samples:
            return times, "max_samples"
        if clock() >= deadline:
            return times, "time"
        if n >= check_at:
            if _precise(times, plan):
                return times, "precision"
            check_at = _next_check(n)


def ratio_ci(
    a: list[float], b: list[float], confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """median(a) / median(b) with a percentile-bootstrap CI, resampling both series independently.

    Hand-written with numpy (a dozen lines) because scipy, whose ``stats.bootstrap`` does this,
    is not a dependency of llmcheck."""
    import numpy as np

    rng = np.random.default_rng(seed)
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ma = np.median(xa[rng.integers(0, len(xa), (resamples, len(xa)))], axis=1)
    mb = np.median(xb[rng.integers(0, len(xb), (resamples, len(xb)))], axis=1)
    ratios = ma / mb
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(ratios, [tail, 100 - tail])
    return float(np.median(xa) / np.median(xb)), float(lo), float(hi)


def to_torch_measurement(m: Measurement, label: str, sub_label: str = "", description: str = ""):
    """The series as a ``torch.utils.benchmark.Measurement`` (one call per sample), for ``Compare``."""
    from torch.utils.benchmark import Measurement as TorchMeasurement
    from torch.utils.benchmark.utils.common import TaskSpec

    spec = TaskSpec(
        stmt=label,
        setup="",
        label=label,
        sub_label=sub_label or None,
        description=description or "llmcheck",
        num_threads=m.threads,
    )
    return TorchMeasurement(1, [t / 1e3 for t in m.samples_ms], spec)
