"""A/B benchmarking: two versions of a model measured interleaved in one session, so drift cancels.

Run-to-run drift on a shared machine is larger than the noise inside one run (docs/design.md §4), so
two stored reports from separate runs cannot tell a 5 % change from a noisy afternoon. Here BASE
and HEAD are measured in rounds. A pair of worker processes, one per side, starts at once (their
torch imports overlap each other, never a measurement) and serves ``recycle`` rounds before a
fresh pair replaces it. In each round the two take turns, in an order drawn per round from a
seeded RNG, running the check's own measurement with a short fixed plan: ``repeats`` turns each in
the Thue-Morse order A B B A B A A B, which cancels a linear drift within the round as well as a
constant one. Each turn gives the minimum of its samples (or another statistic, `STATISTICS`); a
side's value in a round is its least disturbed turn (the minimum, timeit's rule for repeats: on a
shared machine a turn can only be slowed by other jobs, never sped up). The round's ratio
HEAD/BASE cancels what the machine did over those seconds.

Why warm processes, recycled: starting two interpreters that import torch costs seconds (about
20 s a round on this project's loaded 2-core machine), a round of turns a second or less. But a
process carries its own offset (memory layout, scheduling: 9 % between processes, §4), shared
by every round it serves, so rounds of one process pair are not independent. The interval is
therefore taken over process pairs: each pair's rounds are averaged (geometric mean) into one
ratio, and the Student-t interval runs over those (a cluster mean; with ``recycle=1`` it is the
fresh-pair-per-round design pyperf uses). Averaging k rounds removes the round-to-round noise by
k while the pair costs one start-up, so the budget buys far more information per minute; fresh
pairs keep sampling the between-process variance the interval must include.

Rounds stop at the time budget, or for a configuration once its interval is narrower than the
precision target (`llmcheck.stats.ab_intervals`). This module runs in the parent and stays free of torch.
"""

from __future__ import annotations

import math
import os
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmcheck.isolation.worker import WorkerFailure, WorkerProcess, run_message
from llmcheck.registry import Check, variant_id
from llmcheck.results import Result
from llmcheck.settings import Layer, Params
from llmcheck.stats import ab_intervals as ab_stats

# The timing series each check can be compared on: name -> its raw-sample series in the result.
METRICS: dict[str, dict[str, str]] = {
    "latency": {"forward": "forward_ms", "prefill": "prefill_ms", "ttft": "ttft_ms", "decode": "decode_token_ms"},
    "throughput": {"inference": "inference_bs={bs}_ms", "training": "training_bs={bs}_ms"},
}
# What each turn's raw samples are summarised by. A code change moves every call; a neighbour on
# a shared machine only ever adds time to some. Measured here (2 cores, load 3 from other jobs):
# turn medians of 1.7-7.4 ms for a 1.7 ms forward, pairs off by 2-3x with the median; the minimum
# kept 6-vs-5-block pairs within 1.12-1.31. So the default is the minimum, as timeit advises.
STATISTICS = {"median": 0.5, "p25": 0.25, "p10": 0.10, "min": 0.0}
# Each turn measures for a fixed time: its statistic is one observation, and precision comes from
# the number of rounds and process pairs, not from one long series (sampling stops on time, not on
# the CI). One torch thread: on a busy 2-core machine two threads of one process wait on each other
# whenever one is descheduled; measured here (load 9-10, the example model, 2-minute A/A runs), two
# threads gave intervals of 0.28-1.65 and 0.003-24.6 around a ratio that is 1, one thread
# 0.989-1.019. Both sides run the same thread count, so the comparison stays fair; --set
# latency.num_threads=0 restores torch's own setting.
PLAN = {
    "latency": {
        "warmup_s": 0.03,
        "min_samples": 10,
        "max_samples": 400,
        "max_time_s": 0.08,
        "target_rel_ci": 0.0,
        "num_threads": 1,
    },
    "throughput": {
        "num_threads": 1,
        "warmup_s": 0.05,
        "min_samples": 10,
        "max_samples": 400,
        "max_time_s": 0.2,
        "target_rel_ci": 0.0,
        "count_flops": False,
        "parallel_workers": 1,
    },
}


@dataclass(frozen=True)
class Options:
    budget_s: float = 60.0  # wall time of the rounds, all configurations together
    precision: float = 0.02  # stop a configuration once its CI half-width is within this
    threshold: float = 0.05  # a change must clear this (both ways) to be called
    seed: int = 0  # of the per-round order
    min_pairs: int = 5  # before the precision stop may end a configuration
    repeats: int = 4  # measurements per process per round, in turns: A B B A B A A B
    statistic: str = "min"  # of each turn's raw samples (STATISTICS)
    max_pairs: int = 200  # rounds
    confidence: float = ab_stats.CONFIDENCE
    recycle: int = 8  # rounds one pair of worker processes serves before a fresh pair starts (1: every round)


@dataclass(frozen=True)
class Side:
    label: str  # BASE or HEAD
    path: str  # model file or folder
    model: str  # the model's name in that file


@dataclass
class Config:
    """One configuration under test and what its rounds gave."""

    key: str  # the id shown: latency's variant id, or bs=N-<variant> for throughput
    model: str
    variant: dict[str, Any]  # sent to the worker
    params: dict[str, Any]
    settings: dict[str, Any]
    pairs: list[dict[str, Any]] = field(default_factory=list)
    status: str = "running"  # running, done, skipped, error
    stop: str = ""  # precision, budget, max_pairs
    note: str = ""


def plan_layer(check: str) -> Layer:
    """The per-process plan, as a settings layer below the model's and the command line's."""
    return Layer("llmcheck ab's per-process plan", {check: PLAN[check]} if check in PLAN else {})


def configurations(
    check: Check, params: dict, settings: dict, model: str, metric: str, variant: dict | None = None
) -> list[Config]:
    """The configurations of ``check`` for ``model`` (one variant's, when given). Throughput sweeps
    batch sizes inside one item; here each batch size is a configuration of its own."""
    params = Params(
        {**params, **({"processes": 1} if "processes" in check.params else {})}
    )  # each process times itself
    variants = [variant] if variant is not None else check.variants(params)
    if check.name != "throughput":
        return [Config(variant_id(v), model, dict(v), params, dict(settings)) for v in variants]
    return [
        Config(
            variant_id({"bs": bs, **v}),
            model,
            dict(v),
            {**params, "batch_sizes": [bs], "train": metric == "training"},
            dict(settings),
        )
        for v in variants
        for bs in params["batch_sizes"]
    ]


def select(configs: list[Config], keyword: str = "", exact: list[str] | None = None) -> list[Config]:
    """Configurations whose id contains every space-separated term of ``keyword`` (a term starting
    with ``not `` or ``!`` must not appear), and, when ``exact`` is given, is one of those ids."""
    terms, words = [], keyword.split()
    while words:
        word = words.pop(0)
        negate = word == "not" and bool(words)
        word = words.pop(0) if negate else word
        terms.append((negate or word.startswith("!"), word.lstrip("!")))
    return [
        c
        for c in configs
        if (not exact or c.key in exact) and all((t.lower() in c.key.lower()) != neg for neg, t in terms)
    ]


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile with linear interpolation between order statistics (numpy's default)."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def metric_ms(result: Result, check: str, metric: str, statistic: str, c: Config) -> float | None:
    """The statistic of the metric's raw samples in one process's result (ms), or None."""
    name = METRICS[check][metric].format(bs=c.params.get("batch_sizes", [0])[0])
    samples = [v for v in result.samples.get(name) or [] if isinstance(v, (int, float))]
    return quantile(samples, STATISTICS[statistic]) if samples else None


class Session:
    """Starts workers for the A/B rounds; keeps the two that described the files for round one."""

    def __init__(self, startup_timeout: float = 120.0, cwd: str | None = None):
        self.folder = Path(tempfile.mkdtemp(prefix="llmcheck-ab-logs-"))
        self.startup_timeout, self.cwd = startup_timeout, cwd
        self.warm: dict[str, WorkerProcess] = {}
        self.env: dict[str, Any] = {}

    def start(self, label: str) -> WorkerProcess:
        return self.warm.pop(label, None) or WorkerProcess(self.folder, self.startup_timeout, self.cwd)

    def describe(self, paths: dict[str, str], keep: bool = True) -> dict[str, list[dict] | str]:
        """label -> the models a file declares, or the error text; both workers start at once."""
        workers = {label: self.start(label) for label in paths}
        out: dict[str, list[dict] | str] = {}
        for label, worker in workers.items():
            try:
                reply, _ = worker.request({"op": "describe", "file": paths[label]}, self.startup_timeout)
                self.env = self.env or worker.env or {}
                out[label] = reply["models"] if reply["op"] == "described" else reply["message"]
            except WorkerFailure as exc:
                out[label] = f"{exc.message}\n{exc.output}".strip()
            if keep and worker.alive:
                self.warm[label] = worker
            else:
                worker.close()
        return out

    def close(self) -> None:
        for worker in self.warm.values():
            worker.close()
        self.warm.clear()
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)


@dataclass
class Generation:
    """The pair of warm worker processes serving the current rounds, and what they cost."""

    number: int
    workers: dict[str, WorkerProcess]  # label -> worker
    rounds: int = 0
    failure: Result | None = None  # why the pair could not measure (a file that fails to load)


def run(
    session: Session,
    base: Side,
    head: Side,
    check: str,
    metric: str,
    configs: list[Config],
    options: Options,
    on_round: Callable[[int, float, list[Config]], None] | None = None,
) -> int:
    """Rounds of (BASE, HEAD) in a random order until every configuration is done or the budget is
    spent; returns the number of rounds. Each configuration's ``pairs`` grow by one per round, each
    pair naming the process pair (``process``) that measured it."""
    rng = random.Random(options.seed)
    clock = Clock(time.monotonic())
    gen: Generation | None = None
    rounds = 0
    try:
        while any(c.status == "running" for c in configs):
            active = [c for c in configs if c.status == "running"]
            fresh = gen is None or gen.rounds >= clock.rounds_per_pair(options)
            if _out_of_budget(active, clock, options, fresh):
                for c in active:
                    c.status, c.stop = "done", "budget"
                break
            if fresh:
                began, spawned = time.monotonic(), not session.warm  # round one may reuse describe's workers
                retired = list(gen.workers.values()) if gen is not None else []
                gen = _start_pair(session, (base, head), configs, rng, 1 if gen is None else gen.number + 1, retired)
                if spawned:
                    clock.startups.append(time.monotonic() - began)
            began, rounds = time.monotonic(), rounds + 1
            order = [base, head] if rng.random() < 0.5 else [head, base]
            values = _round(gen, order, check, metric, options.statistic, rng.sample(active, len(active)), options)
            gen.rounds += 1
            for c in active:
                _add_pair(c, rounds, gen.number, order[0].label, values, options)
            clock.rounds.append(time.monotonic() - began)
            if on_round:
                on_round(rounds, clock.elapsed(), active)
    finally:
        if gen is not None:
            close_all(list(gen.workers.values()))
    return rounds


@dataclass
class Clock:
    """What the run's time went to so far: process-pair start-ups and rounds of turns."""

    start: float
    startups: list[float] = field(default_factory=list)
    rounds: list[float] = field(default_factory=list)

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def rounds_per_pair(self, options: Options) -> int:
        """``options.recycle``, lowered when the budget could not otherwise hold ``min_pairs`` process
        pairs at the start-up and round times measured so far (the interval is over process pairs)."""
        if not self.rounds:
            return max(1, options.recycle)
        startup = statistics.median(self.startups) if self.startups else 0.0  # none spawned yet
        per_round = statistics.median(self.rounds)
        fits = (options.budget_s / max(options.min_pairs, 1) - startup) / max(per_round, 1e-3)
        return max(1, min(options.recycle, int(fits)))


def _out_of_budget(active: list[Config], clock: Clock, options: Options, fresh: bool) -> bool:
    """Whether the next round (with a fresh process pair's start-up, if one is due) would overrun
    the budget; never before every configuration has the process pairs an interval needs."""
    enough = all(len(process_ratios(c.pairs)) >= ab_stats.MIN_PAIRS_FOR_INTERVAL for c in active)
    if not enough or not clock.rounds:
        return False
    startup = statistics.median(clock.startups) if clock.startups else clock.rounds[-1]  # none seen: a guess
    cost = clock.rounds[-1] + (startup if fresh else 0.0)
    return clock.elapsed() + cost > options.budget_s


def _start_pair(
    session: Session, sides: tuple[Side, Side], configs: list[Config], rng, number: int, retired: list[WorkerProcess]
) -> Generation:
    """Both sides' workers, started at once (imports overlap each other and the retired pair's exit,
    never a measurement), pinned to one CPU set, and idle (the model file loaded) before any timing."""
    workers = {side.label: session.start(side.label) for side in sides}
    share_cpus(list(workers.values()), configs, rng)
    close_all(retired)
    gen = Generation(number, workers)
    for side in sides:
        gen.failure = gen.failure or _ready(session, workers[side.label], side)
    return gen


def _round(
    gen: Generation,
    order: list[Side],
    check: str,
    metric: str,
    statistic: str,
    configs: list[Config],
    options: Options,
) -> dict[str, dict[str, Result | list[float]]]:
    """One round on the warm pair: the sides take turns in the Thue-Morse order (A B B A for two
    repeats), which cancels a linear drift within the round as well as a constant one."""
    if gen.failure is not None:
        return {s.label: {c.key: gen.failure for c in configs} for s in order}
    out: dict[str, dict[str, Any]] = {side.label: {c.key: [] for c in configs} for side in order}
    turns = [i for r in range(options.repeats) for i in ((0, 1) if bin(r).count("1") % 2 == 0 else (1, 0))]
    for i in turns:
        side = order[i]
        for c in configs:
            got = out[side.label][c.key]
            if isinstance(got, list):
                value = _measure(gen.workers[side.label], side, check, metric, statistic, c)
                out[side.label][c.key] = got + [value] if isinstance(value, float) else value
    return out


def share_cpus(workers: list[WorkerProcess], configs: list[Config], rng: random.Random) -> None:
    """Pin the round's two processes to the same CPUs, drawn per round, when they time with fewer
    torch threads than there are CPUs. On a shared machine a process placed next to a busy
    neighbour runs several times slower for its whole life while one on another CPU does not
    (measured here: turns of 6.6-7.4 ms against 1.9-2.3 ms, interleaved within the same two
    seconds); on one CPU set both sides meet the same neighbours, and the pairing cancels them."""
    threads = configs[0].params.get("num_threads") or int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not threads or threads >= len(allowed):
        return
    cpus = set(rng.sample(allowed, threads))
    for worker in workers:
        try:
            os.sched_setaffinity(worker.pid, cpus)  # the worker, not the reaper it runs under
        except OSError:
            pass  # the process already ended: its failure is reported by the next request


def close_all(workers: list[WorkerProcess]) -> None:
    """Close workers side by side: each waits for its interpreter's exit (about half a second with torch)."""
    threads = [threading.Thread(target=w.close) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _ready(session: Session, worker: WorkerProcess, side: Side) -> Result | None:
    try:
        reply, output = worker.request({"op": "describe", "file": side.path}, session.startup_timeout)
    except WorkerFailure as exc:
        return Result(exc.status, f"{side.label}: {exc.message}", trace=exc.trace, output=exc.output)
    return Result("error", f"{side.label}: {reply['message']}", output=output) if reply["op"] == "error" else None


def _measure(worker: WorkerProcess, side: Side, check: str, metric: str, statistic: str, c: Config) -> Result | float:
    """One turn: the statistic of the metric's samples (ms), or the Result that says why there is none."""
    message = run_message(side.path, side.model, check, c.params, c.settings, c.variant)
    try:
        reply, output = worker.request(message, c.params["timeout"])
    except WorkerFailure as exc:
        return Result(exc.status, f"{side.label}: {exc.message}", trace=exc.trace, output=exc.output)
    result = Result.from_json(reply["result"])
    result.output = output
    if result.status in ("skipped", "error", "timeout", "crashed"):
        result.message = f"{side.label}: {result.message}"
        return result
    value = metric_ms(result, check, metric, statistic, c)
    if value is None or value <= 0:
        why = (result.metrics.get("generation_note") if check == "latency" else "") or "the check did not report it"
        return Result("error", f"{side.label}: {check} did not measure {metric} ({why})")
    return value


def _add_pair(c: Config, round_no: int, process: int, first: str, medians: dict, options: Options) -> None:
    runs = {label: medians[label][c.key] for label in ("BASE", "HEAD")}
    broken = next((r for r in runs.values() if isinstance(r, Result)), None)
    if broken is not None:
        c.status = "skipped" if broken.status == "skipped" else "error"
        c.note = f"[{broken.status}] {broken.message}"
        return
    base, head = (min(runs[label]) for label in ("BASE", "HEAD"))  # timeit's rule: the least disturbed run
    c.pairs.append(
        {
            "round": round_no,
            "process": process,
            "first": first,
            "base_ms": base,
            "head_ms": head,
            "ratio": head / base,
            "base_runs_ms": runs["BASE"],
            "head_runs_ms": runs["HEAD"],
        }
    )
    est = estimate(c.pairs, options.confidence)
    if ab_stats.precise_enough(est, options.precision, options.min_pairs):
        c.status, c.stop = "done", "precision"
    elif len(c.pairs) >= options.max_pairs:
        c.status, c.stop = "done", "max_pairs"


def process_ratios(pairs: list[dict[str, Any]]) -> list[float]:
    """One ratio per process pair: the geometric mean of the ratios of the rounds it measured (pairs
    without a ``process``, from before processes were reused, are their own process pair)."""
    groups: dict[Any, list[float]] = {}
    for i, p in enumerate(pairs):
        if p["ratio"] > 0 and math.isfinite(p["ratio"]):
            groups.setdefault(p.get("process", f"round {i}"), []).append(math.log(p["ratio"]))
    return [math.exp(statistics.fmean(logs)) for logs in groups.values()]


def estimate(pairs: list[dict[str, Any]], confidence: float = ab_stats.CONFIDENCE) -> ab_stats.Estimate:
    """The ratio HEAD/BASE and its interval over process pairs (the module docstring says why)."""
    return ab_stats.estimate(process_ratios(pairs), confidence)


def explain(est: ab_stats.Estimate, rounds: int, threshold: float) -> str:
    """One line: the verdict with the ratio, its interval and what the run could have detected."""
    v = ab_stats.verdict(est, threshold)
    if v == "inconclusive":
        return (
            f"inconclusive: {rounds} rounds in {est.n} process pair{'s' if est.n != 1 else ''}; an interval "
            f"needs at least {ab_stats.MIN_PAIRS_FOR_INTERVAL} process pairs (raise the budget)"
        )
    ci = (
        f"ratio {est.ratio:.3f} ({est.confidence:.0%} CI {est.ci_low:.3f}-{est.ci_high:.3f}, "
        f"{rounds} rounds in {est.n} process pairs)"
    )
    slow, fast = ab_stats.detectable(est, threshold)
    if v == "regression":
        return f"regression: {ci} lies wholly above +{threshold:.0%}"
    if v == "improvement":
        return f"improvement: {ci} lies wholly below -{threshold:.0%}"
    return f"no significant change: {ci}; could have detected changes beyond +{slow:.1%} / -{fast:.1%}"


def outcome(c: Config, options: Options) -> dict[str, Any]:
    """A configuration's result record: pairs, medians, the estimate and the verdict."""
    est = estimate(c.pairs, options.confidence)
    verdict = c.status if c.status in ("skipped", "error") else ab_stats.verdict(est, options.threshold)
    found = ab_stats.detectable(est, options.threshold)
    message = c.note if c.status in ("skipped", "error") else explain(est, len(c.pairs), options.threshold)
    median = lambda key: statistics.median(p[key] for p in c.pairs) if c.pairs else None
    return {
        "id": c.key,
        "model": c.model,
        "variant": c.variant,
        "verdict": verdict,
        "message": message,
        "stop": c.stop,
        "pairs": c.pairs,
        "process_pairs": est.n,
        "base_median_ms": median("base_ms"),
        "head_median_ms": median("head_ms"),
        "estimate": est.to_json(),
        "detectable": {"slowdown": found[0], "speedup": found[1]} if found else None,
    }


def progress_line(round_no: int, elapsed: float, configs: list[Config], options: Options) -> str:
    """One terminal line per round: per configuration, this round's ratio and the estimate so far."""
    parts = []
    for c in configs:
        if not c.pairs or c.pairs[-1]["round"] != round_no:
            parts.append(f"{c.key}: {c.status} ({c.note[:80]})")
            continue
        est = estimate(c.pairs, options.confidence)
        ci = f" [{est.ci_low:.3f}, {est.ci_high:.3f}]" if est.ci_low is not None else ""
        parts.append(
            f"{c.key}: {c.pairs[-1]['ratio']:.3f} -> {est.ratio:.3f}{ci} ({est.n} process pairs)"
            + (" done" if c.stop else "")
        )
    return f"llmcheck ab: round {round_no} ({elapsed:.0f}/{options.budget_s:g} s): " + "; ".join(parts)
