"""A/B benchmarking: two versions of a model measured interleaved in one session, so drift cancels.

Run-to-run drift on a shared machine is larger than the noise inside one run (docs/design.md §4), so
two stored reports from separate runs cannot tell a 5 % change from a noisy afternoon. Here BASE
and HEAD are measured in rounds. Each round starts one fresh worker process per side (their torch
imports overlap each other, never a measurement); once both are idle they take turns, in an order
drawn per round from a seeded RNG, running the check's own measurement with a short fixed plan:
``repeats`` turns each in the Thue-Morse order A B B A B A A B, which cancels a linear drift
within the round as well as a constant one. Each turn gives the minimum of its samples (or
another statistic, `STATISTICS`); a process is summarised by its least disturbed turn (the minimum,
timeit's rule for repeats: on a shared
machine a turn can only be slowed by other jobs, never sped up). The pair's ratio HEAD/BASE
cancels what the machine did over those seconds; fresh processes per pair, as pyperf uses, turn
each process's own offset (layout, scheduling) into noise the interval accounts for. Rounds stop
at the time budget, or for a configuration once its interval is narrower than the precision
target (`llmcheck.stats.ab_intervals`). This module runs in the parent and stays free of torch.
"""

from __future__ import annotations

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
# Each process measures once, for a fixed time: its median is one observation, and precision comes
# from the number of processes, not from one long series (sampling stops on time, not on the CI).
PLAN = {
    "latency": {"warmup_s": 0.03, "min_samples": 10, "max_samples": 400, "max_time_s": 0.08, "target_rel_ci": 0.0},
    "throughput": {
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
    max_pairs: int = 200
    confidence: float = ab_stats.CONFIDENCE


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
    spent; returns the number of rounds. Each configuration's ``pairs`` grow by one per round."""
    rng = random.Random(options.seed)
    start, last, rounds = time.monotonic(), 0.0, 0
    while any(c.status == "running" for c in configs):
        active = [c for c in configs if c.status == "running"]
        elapsed = time.monotonic() - start
        enough = all(len(c.pairs) >= ab_stats.MIN_PAIRS_FOR_INTERVAL for c in active)  # else the run says nothing
        if enough and elapsed + last > options.budget_s:  # the next round would overrun the budget
            for c in active:
                c.status, c.stop = "done", "budget"
            break
        began, rounds = time.monotonic(), rounds + 1
        order = [base, head] if rng.random() < 0.5 else [head, base]
        medians = _round(
            session, order, check, metric, options.statistic, rng.sample(active, len(active)), options.repeats, rng
        )
        for c in active:
            _add_pair(c, rounds, order[0].label, medians, options)
        last = time.monotonic() - began
        if on_round:
            on_round(rounds, time.monotonic() - start, active)
    return rounds


def _round(
    session: Session,
    order: list[Side],
    check: str,
    metric: str,
    statistic: str,
    configs: list[Config],
    repeats: int,
    rng: random.Random,
) -> dict[str, dict[str, Result | list[float]]]:
    """One pair of fresh processes; they take turns in an ABBA pattern (A B B A for two repeats),
    which cancels a linear drift within the round as well as a constant one."""
    workers = [session.start(side.label) for side in order]  # both start now: imports overlap each other only
    share_cpus(workers, configs, rng)
    out: dict[str, dict[str, Any]] = {side.label: {c.key: [] for c in configs} for side in order}
    try:
        for side, worker in zip(order, workers):  # wait until both are idle before timing anything
            failure = _ready(session, worker, side)
            if failure is not None:
                return {s.label: {c.key: failure for c in configs} for s in order}
        turns = [i for r in range(repeats) for i in ((0, 1) if bin(r).count("1") % 2 == 0 else (1, 0))]  # Thue-Morse
        for i in turns:
            for c in configs:
                got = out[order[i].label][c.key]
                if isinstance(got, list):
                    value = _measure(workers[i], order[i], check, metric, statistic, c)
                    out[order[i].label][c.key] = got + [value] if isinstance(value, float) else value
        return out
    finally:
        close_all(workers)


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
            os.sched_setaffinity(worker.proc.pid, cpus)
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


def _add_pair(c: Config, round_no: int, first: str, medians: dict, options: Options) -> None:
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
            "first": first,
            "base_ms": base,
            "head_ms": head,
            "ratio": head / base,
            "base_runs_ms": runs["BASE"],
            "head_runs_ms": runs["HEAD"],
        }
    )
    est = ab_stats.estimate([p["ratio"] for p in c.pairs], options.confidence)
    if ab_stats.precise_enough(est, options.precision, options.min_pairs):
        c.status, c.stop = "done", "precision"
    elif len(c.pairs) >= options.max_pairs:
        c.status, c.stop = "done", "max_pairs"


def outcome(c: Config, options: Options) -> dict[str, Any]:
    """A configuration's result record: pairs, medians, the estimate and the verdict."""
    est = ab_stats.estimate([p["ratio"] for p in c.pairs], options.confidence)
    verdict = c.status if c.status in ("skipped", "error") else ab_stats.verdict(est, options.threshold)
    found = ab_stats.detectable(est, options.threshold)
    message = c.note if c.status in ("skipped", "error") else ab_stats.explain(est, options.threshold)
    median = lambda key: statistics.median(p[key] for p in c.pairs) if c.pairs else None
    return {
        "id": c.key,
        "model": c.model,
        "variant": c.variant,
        "verdict": verdict,
        "message": message,
        "stop": c.stop,
        "pairs": c.pairs,
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
        est = ab_stats.estimate([p["ratio"] for p in c.pairs], options.confidence)
        ci = f" [{est.ci_low:.3f}, {est.ci_high:.3f}]" if est.ci_low is not None else ""
        parts.append(f"{c.key}: {c.pairs[-1]['ratio']:.3f} -> {est.ratio:.3f}{ci}" + (" done" if c.stop else ""))
    return f"llmcheck ab: round {round_no} ({elapsed:.0f}/{options.budget_s:g} s): " + "; ".join(parts)
