"""One measurement spread over several worker processes, merged and judged in the parent.

Run-to-run drift on shared machines is larger than within-run noise (docs/design.md §4), and one
process's samples cannot show it. A check that declares ``merge`` (latency) is therefore measured
in the model's worker and then in ``processes - 1`` other workers, one after the other (never at
once: they would time each other). Each process's metrics and raw samples come back as usual; the
check's pure ``merge`` combines the metrics, the raw samples are pooled in process order, the
per-process medians and spreads of every repeated series go to ``metrics["processes"]`` (read by
``llmcheck compare``), and the check's pure ``judge`` gives the verdict on the merged numbers.
All of this runs in the pytest process, which stays torch-free.

Budget: the extra processes may add ``processes_budget_s`` seconds to the item (default a quarter
of its timeout). Before each one the cost is estimated (the last extra process's wall time, or the
first measurement plus a worker start-up); when it would not fit, fewer processes are measured and
the message says so. Each extra request keeps the item's timeout and start-up timeout; an extra
process that times out, crashes or errors fails the item with its own status and evidence, named
as that process: the model misbehaved, so the item must not pass on the processes that survived.
"""

from __future__ import annotations

import time
from typing import Any

from llmcheck.isolation.worker import WorkerFailure, WorkerPool
from llmcheck.registry import Check, Param
from llmcheck.results import Result
from llmcheck.settings import Params
from llmcheck.stats import spread
from llmcheck.stats.significance import repeated

STARTUP_GUESS_S = 2.0  # a fresh worker imports torch (about 1.4 s here, docs/design.md §6), then the model file
BUDGET_SHARE = 0.25  # of the item's timeout, when processes_budget_s is not set
MEASURED = ("passed", "failed")  # statuses of a process that measured (a failed budget still measured)

PARAMS: dict[str, Param] = {
    "processes": Param(
        int,
        3,
        "worker processes the measurement is spread over (the model's worker, then others "
        "ones); 1: the model's worker only",
        minimum=1,
    ),
    "processes_budget_s": Param(
        float,
        None,
        "seconds the extra processes may add to one item (default: a quarter "
        "of its timeout); fewer are measured, and the message says so, when "
        "the next would not fit",
        minimum=0,
    ),
}


def wanted(check: Check, params) -> bool:
    return check.merge is not None and int(params.get("processes") or 1) > 1


def spread_over_processes(
    check: Check, message: dict[str, Any], params, glob, first: Result, pool: WorkerPool, key: tuple
) -> Result:
    """``first`` (measured in the model's worker) merged with the same measurement in the model's other workers;
    ``first`` itself when the check does not spread or did not measure."""
    if not wanted(check, params) or first.status not in MEASURED or not first.metrics:
        return first
    requested = int(params["processes"])
    budget = params.get("processes_budget_s")
    budget = BUDGET_SHARE * float(params["timeout"]) if budget is None else float(budget)
    parts, outputs, spent, last, note = [first], [first.output], 0.0, None, ""
    # A check that planned its work from the model's step cost (llmcheck.measuring.budget) names the
    # parameters that repeat that plan: the other processes do the same work, not a plan of their own.
    replay = (first.metrics.get("plan") or {}).get("replay") or {}
    message = {**message, "params": {**message["params"], **replay}}
    for index in range(2, requested + 1):
        expect = last if last is not None else first.duration_s + STARTUP_GUESS_S
        if spent + expect > budget:
            note = (
                f"measured in {len(parts)} of {requested} processes: process {index} would take about "
                f"{expect:.1f} s more and exceed processes_budget_s = {budget:g} s"
            )
            break
        started = time.perf_counter()
        extra = run_extra(pool, key, index, message, params, glob)
        last = time.perf_counter() - started
        spent += last
        if extra.output.strip():
            outputs.append(f"--- process {index} of {requested} (another worker) ---\n{extra.output}")
        if extra.status not in MEASURED:
            failed = _extra_failed(first, extra, index, requested, "\n".join(outputs))
            failed.duration_s = first.duration_s + spent
            return failed
        parts.append(extra)
    result = merged(check, params, parts, requested, note)
    result.output, result.duration_s = "\n".join(o for o in outputs if o), first.duration_s + spent
    result.phases = dict(first.phases)  # the first worker's; the extra processes are the rest of duration_s
    return result


def run_extra(pool: WorkerPool, key: tuple, index: int, message: dict[str, Any], params, glob) -> Result:
    """The check run once, with ``processes=1``, in the model's extra process ``index`` (started on
    the model's first such item and kept for the next ones); a timeout or crash becomes its result,
    and a process that did not measure cleanly is replaced for the next item."""
    worker = pool.spare(key, index, float(glob["startup_timeout"]))
    single = {**message, "params": {**message["params"], "processes": 1}}
    try:
        reply, output = worker.request(single, timeout=float(params["timeout"]))
    except WorkerFailure as exc:
        pool.retire_spare(key, index)
        return Result(exc.status, exc.message, exc.metrics, trace=exc.trace, output=exc.output)
    result = Result.from_json(reply["result"])
    result.output = output
    if result.status not in MEASURED or reply.get("retire"):
        pool.retire_spare(key, index)
    return result


def merged(check: Check, params, parts: list[Result], requested: int, note: str = "") -> Result:
    """The processes' results as one: merged metrics, pooled samples, the check's verdict on them. Pure."""
    p = Params(params)
    samples = pooled([r.samples for r in parts])
    try:
        metrics = check.merge([{"metrics": r.metrics, "samples": r.samples} for r in parts], p)
        metrics["processes"] = {
            "requested": requested,
            "measured": len(parts),
            "note": note,
            "series": {
                name: spread.series_spread([r.samples.get(name) or [] for r in parts])
                for name in samples
                if repeated(name)
            },
        }
        verdict = check.judge(metrics, p)
    except Exception as exc:  # a check's own bug: an error with the evidence, never a pass
        import traceback

        return Result(
            "error",
            f"check {check.name} could not merge {len(parts)} processes: {type(exc).__name__}: {exc}",
            parts[0].metrics,
            samples,
            trace="".join(traceback.format_exception(exc)),
        )
    artifacts = dict(parts[0].artifacts)
    for i, r in enumerate(parts[1:], start=2):
        artifacts.update({f"{name}.process{i}": path for name, path in r.artifacts.items()})
    message = verdict.message + (f"; {note}" if note else "")
    return Result(verdict.status, message, metrics, samples, artifacts, advisory=list(verdict.advisory))


def pooled(samples: list[dict[str, list[float]]]) -> dict[str, list[float]]:
    """Each series' samples from every process, concatenated in process order."""
    names = list(dict.fromkeys(name for s in samples for name in s))
    return {name: [x for s in samples for x in s.get(name) or []] for name in names}


def _extra_failed(first: Result, extra: Result, index: int, requested: int, output: str) -> Result:
    status = extra.status if extra.status != "skipped" else "error"  # process 1 measured: a skip here is no skip
    metrics = {
        **first.metrics,
        "processes": {
            "requested": requested,
            "measured": index - 1,
            "failed": {"process": index, "status": extra.status},
        },
    }
    message = (
        f"process {index} of {requested} (another worker, after {index - 1} measured) "
        f"{'skipped: ' if extra.status == 'skipped' else ''}{extra.message}"
    )
    return Result(
        status, message, metrics, dict(first.samples), dict(first.artifacts), trace=extra.trace, output=output
    )
