"""hang: training steps, inference steps and a pass over the declared data finish under the
watchdog. Catches deadlocks and endless waits: a lock taken twice, a DataLoader worker stuck in
``__getitem__``, a collective or a native call that never returns.

The watchdog is held by the parent process, so it fires even while the worker's main thread is
stuck in native code: at the latest at the per-check timeout (``hang.timeout``), sooner when a
forward idles without progress (``hang_factor``, ``hang_floor_s``; ``llmcheck.isolation.watchdog``). A heartbeat
(``ctx.progress``) goes out before every step with the phase, the step and how long the previous
step took; when the watchdog fires, the ``timeout`` result carries that heartbeat and its age, so
a slow step (recent heartbeat, long steps) reads differently from a stuck one (old heartbeat,
short steps). The parent then collects every thread's Python stack of the worker and of its
DataLoader workers (and native stacks when py-spy is installed), puts the stuck frame's file and
line in the message, and kills the whole process tree (``llmcheck.isolation.stacks``).
"""

from __future__ import annotations

import itertools
import statistics
import time

from llmcheck.registry import Check, Param
from llmcheck.results import Verdict

_END = object()


def _loader_workers(iterable) -> int | None:
    """``num_workers`` when the data comes from a torch DataLoader, else None."""
    from torch.utils.data import DataLoader

    return iterable.num_workers if isinstance(iterable, DataLoader) else None


def _timed(ctx, phase: str, items, run, limit: int, what: str) -> list[float]:
    """Fetch and run up to ``limit`` items (0: all), each timed, with a heartbeat before each."""
    from llmcheck.target.model import user_call

    times: list[float] = []
    iterator = user_call(f"iter() of {what}", iter, items)
    while not limit or len(times) < limit:
        previous = f"{times[-1]:.3f}" if times else "none"
        ctx.progress(phase=phase, step=len(times) + 1, of=limit or "all", previous_step_s=previous)
        start = time.perf_counter()
        item = user_call(f"next() of {what}", next, iterator, _END)
        if item is _END:
            break
        run(item)
        times.append(time.perf_counter() - start)
    del iterator  # shuts a DataLoader's worker processes down now, not at some later collection
    return times


def _summary(times: list[float], workers: int | None) -> dict:
    slowest = max(range(len(times)), key=times.__getitem__) if times else None
    return {
        "steps": len(times),
        "median_s": statistics.median(times) if times else None,
        "max_s": max(times) if times else None,
        "slowest_step": None if slowest is None else slowest + 1,
        "loader_workers": workers,
    }


def _train(ctx, p) -> dict:
    from llmcheck.target.model import _to
    from llmcheck.target.steps import train_step

    t = ctx.target
    model = t.build().train()
    opt, sched = t.optimizer(model)
    source = t.train_batches()
    items = source if source is not None else itertools.repeat(t.batch())
    times = _timed(
        ctx,
        "train",
        items,
        lambda b: train_step(t, model, opt, sched, _to(b, t.device)),
        p.train_steps,
        "@llmcheck.train_data" if source is not None else "the train batches",
    )
    ctx.record_samples("train_step_s", times)
    return _summary(times, _loader_workers(source) if source is not None else None)


def _forward_all(ctx, p, phase: str, items, limit: int, what: str) -> dict:
    import torch

    from llmcheck.target.model import _to

    t = ctx.target
    model = t.build().eval()

    def run(batch):
        with torch.no_grad():
            t.forward(model, _to(batch, t.device))

    times = _timed(ctx, phase, items, run, limit, what)
    ctx.record_samples(f"{phase}_step_s", times)
    return _summary(times, _loader_workers(items))


def measure(ctx, p) -> dict:
    t = ctx.target
    phases = {"train": _train(ctx, p)}
    phases["inference"] = _forward_all(
        ctx, p, "inference", itertools.repeat(t.batch()), p.inference_steps, "the inference batches"
    )
    data = t.eval_batches()
    if data is not None:
        phases["eval"] = _forward_all(ctx, p, "eval", data, p.eval_batches, "@llmcheck.eval_data")
    return {"phases": phases, "timeout_s": p.timeout}


def _describe(phase: str, s: dict) -> str:
    if not s["steps"]:
        return f"{phase}: no batches"
    source = f" from a DataLoader with {s['loader_workers']} worker process(es)" if s["loader_workers"] else ""
    return (
        f"{phase}: {s['steps']} step(s){source}, median {s['median_s'] * 1e3:.1f} ms, "
        f"slowest {s['max_s'] * 1e3:.1f} ms (step {s['slowest_step']})"
    )


def judge(m: dict, p) -> Verdict:
    phases = m["phases"]
    if p.max_step_s > 0:
        slow = [
            f"{name} step {s['slowest_step']} took {s['max_s']:.3g} s > max_step_s {p.max_step_s:g} s "
            f"(median {s['median_s']:.3g} s): slow, though it finished"
            for name, s in phases.items()
            if s["steps"] and s["max_s"] > p.max_step_s
        ]
        if slow:
            return Verdict("failed", "; ".join(slow))
    done = "; ".join(_describe(name, s) for name, s in phases.items())
    return Verdict("passed", f"{done}; all finished under the {m['timeout_s']:g} s watchdog")


CHECK = Check(
    name="hang",
    family="hang",
    summary="training, inference and the declared data (DataLoader workers included) finish under the watchdog",
    measure=measure,
    judge=judge,
    params={
        "train_steps": Param(int, 3, "optimizer steps (on @llmcheck.train_data batches when declared)", minimum=1),
        "inference_steps": Param(int, 3, "no-grad forward passes in eval mode", minimum=1),
        "eval_batches": Param(int, 20, "batches of @llmcheck.eval_data to run (0: the whole pass)", minimum=0),
        "max_step_s": Param(
            float, 0.0, "a step slower than this fails the check even though it finished (0: off)", minimum=0
        ),
    },
    # The watchdog: a healthy tiny model needs seconds, so a hang is reported within a minute
    # (plus about 2 s to collect stacks) instead of the global default's five.
    timeout=60.0,
)
