"""leak: memory does not grow from one training step to the next, nor from one inference step to
the next. Catches caches and autograd graphs kept across steps: activations appended to a list
on every forward, a running sum that keeps each step's graph alive.

After a warm-up, each phase runs N steps and reads, after every step: the bytes malloc has handed
out and not taken back (glibc ``mallinfo2``: tensor storage and autograd nodes included, exact,
so noise is a few bytes), the process RSS (psutil), and on CUDA ``memory_allocated``/reserved
and the device's used memory. A gc census of live tensors by (dtype, shape) at a few points says
*what* accumulates and who holds it. Growth is judged as a trend, never first-vs-last: the
Theil–Sen slope (robust to outliers and allocator steps) must exceed the threshold in bytes per
iteration, its confidence interval must exclude zero, and the growth must hold in both halves of
the run, so a one-off step (a cache filled once) does not fire.
"""

from __future__ import annotations

import ctypes
import gc
import itertools
import time

from llmcheck.measuring import budget
from llmcheck.registry import Check, Param
from llmcheck.results import Skip, Verdict

PHASES = ("train", "inference")
# The trend's least iterations: benchmarks/leak_sensitivity.py catches an 8 KiB/step leak with 10.
MIN_ITERATIONS = 10


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _mallinfo2():
    """glibc's mallinfo2 (2.33+), or None elsewhere. psutil reports pages (RSS), not malloc's
    in-use bytes, and no maintained package wraps mallinfo2, hence ctypes."""
    try:
        fn = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _Mallinfo2
    return fn


def heap_reader():
    """() -> bytes in use by malloc (small chunks plus mmapped ones), or None without glibc."""
    fn = _mallinfo2()
    if fn is None:
        return None
    return lambda: (lambda m: m.uordblks + m.hblkhd)(fn())


class Probe:
    """Per-iteration memory readings of this process (and its CUDA device)."""

    def __init__(self, device):
        import psutil
        import torch

        self.torch, self.device, self.proc = torch, device, psutil.Process()
        self.cuda = device.type == "cuda"
        heap = heap_reader()
        self.readers = {"rss": lambda: self.proc.memory_info().rss}
        if heap is not None:
            self.readers["heap"] = heap
        if self.cuda:
            cuda = torch.cuda
            self.readers.update(
                cuda_allocated=lambda: cuda.memory_allocated(device),
                cuda_reserved=lambda: cuda.memory_reserved(device),
                device_used=lambda: _device_used(device),
            )
        self.judged = (["cuda_allocated"] if self.cuda else []) + (["heap"] if heap is not None else ["rss"])

    def read(self) -> dict[str, float]:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)
        return {name: float(read()) for name, read in self.readers.items()}


def _device_used(device) -> float:
    """Used memory of the whole device as the driver sees it (nvidia-ml-py through torch)."""
    import torch

    try:
        return float(torch.cuda.device_memory_used(device))
    except Exception:  # no NVML (pynvml missing, or not an NVIDIA device): not judged anyway
        return float("nan")


def _stepper(t, phase: str):
    """(model, one training or inference step on a fixed batch)."""
    import torch

    from llmcheck.target.steps import train_step

    model, batch = t.build(), t.batch()
    if phase == "train":
        opt, sched = t.optimizer(model.train())
        return model, lambda: train_step(t, model, opt, sched, batch)
    model.eval()

    def step():
        with torch.no_grad():
            t.forward(model, batch)

    return model, step


class _Census:
    """Censuses during the loop, with their own allocations taken out of the readings: the
    census runs between steps, so whatever it leaves in the heap (malloc's per-thread cache keeps
    freed chunks counted as in use) is ours, not the model's."""

    def __init__(self, torch, probe):
        self.torch, self.probe, self.offset, self.totals = torch, probe, {}, []

    def take(self) -> tuple[dict, list]:
        from llmcheck.checks.leak.evidence import census, totals

        gc.collect()  # first, so that garbage the model left stays counted as freed
        before = self.probe.read()
        groups, with_graph = census(self.torch, collect=False)
        after = self.probe.read()
        for name in after:
            self.offset[name] = self.offset.get(name, 0.0) + after[name] - before[name]
        self.totals.append(totals(groups))
        return groups, with_graph

    def read(self) -> dict[str, float]:
        return {name: value - self.offset.get(name, 0.0) for name, value in self.probe.read().items()}


def _loop(ctx, p, phase: str, step, probe, n: int) -> dict:
    import torch

    points = sorted({round(k * (n - 1) / (p.census_points - 1)) for k in range(p.census_points)})
    series = {name: [0.0] * n for name in probe.readers}
    counter = _Census(torch, probe)
    first, _ = counter.take()
    for i in range(n):
        if i % 10 == 0:
            ctx.progress(phase=phase, iteration=i, of=n)
        step()
        gc.collect(1)  # cycles made by this step, so they do not read as growth until a full collection
        for name, value in counter.read().items():
            series[name][i] = value
        if i in points and i != 0:
            last, with_graph = counter.take()
    # census positions in steps done: before the first step, then after step i (i + 1 done)
    done = [0] + [i + 1 for i in points if i != 0]
    return {
        "series": series,
        "points": done,
        "totals": counter.totals,
        "first": first,
        "last": last,
        "with_graph": with_graph,
    }


def _run_phase(ctx, p, phase: str, n: int) -> dict:
    import torch

    from llmcheck.checks.leak.evidence import graph_holders, growth, holder_of

    t = ctx.target
    model, step = _stepper(t, phase)
    for _ in range(p.warmup):
        step()
    probe = Probe(t.device)
    snapshot = _start_snapshot(torch, t.device, p)
    run = _loop(ctx, p, phase, step, probe, n)
    for name, values in run["series"].items():
        ctx.record_samples(f"{phase}_{name}_bytes", values)
    ctx.record_samples(f"{phase}_live_tensors", [c for c, _ in run["totals"]])
    growing = growth(run["first"], run["last"])[:5]
    for rank, g in enumerate(growing):
        obj = g.pop("ref")()
        g["held_by"] = holder_of(obj, model) if obj is not None and rank < 3 else None
    return {
        "series": run["series"],
        "judged": probe.judged,
        "census_iterations": run["points"],
        "census": [{"tensors": c, "bytes": b} for c, b in run["totals"]],
        "growing_tensors": growing,
        "graph_holders": graph_holders(run["with_graph"], model),
        "cuda_snapshot": _dump_snapshot(torch, snapshot, ctx, phase),
    }


def _start_snapshot(torch, device, p):
    """Start recording CUDA allocation history (with stacks) when running on CUDA."""
    if device.type != "cuda" or not p.cuda_snapshot:
        return None
    torch.cuda.memory._record_memory_history(max_entries=200_000)
    return True


def _dump_snapshot(torch, started, ctx, phase: str) -> str | None:
    if not started:
        return None
    path = ctx.tmpdir / f"{phase}_cuda_memory_snapshot.pickle"  # open at https://pytorch.org/memory_viz
    torch.cuda.memory._dump_snapshot(str(path))
    torch.cuda.memory._record_memory_history(enabled=None)
    ctx.artifact(f"{phase}_cuda_memory_snapshot", path)
    return str(path)


def _plan(ctx, p) -> budget.Plan:
    """Iterations per phase that fit ``budget_s``: an iteration of every phase (a training step, an
    inference forward) at the measured cost, after the warm-up and the censuses' full collections."""
    costs = budget.step_costs(ctx.target, train="train" in p.phases)
    per = {"train": budget.train_or_forward(costs), "inference": costs.get("forward_s")}
    units = [per[phase] for phase in p.phases]
    unit = None if None in units else sum(units)
    started = time.perf_counter()
    gc.collect()  # what each census costs: a full collection
    fixed = p.warmup * (unit or 0.0) + len(p.phases) * p.census_points * (time.perf_counter() - started)
    return budget.plan(
        ctx, "iterations per phase", unit, MIN_ITERATIONS, p.iterations, budget.allowed(p), fixed_s=fixed, check="leak"
    )


def sensitivity(phases: dict, p) -> str:
    """The smallest growth the judged trends could call a leak: the threshold, or the widest half
    confidence interval of a judged slope when the readings are noisier than that."""
    from llmcheck.checks.leak.evidence import size

    widths = [
        (tr["high"] - tr["low"]) / 2
        for r in phases.values()
        for name in r["judged"]
        if (tr := r["trends"].get(name)) is not None
    ]
    widest, threshold = max(widths, default=0.0), p.max_bytes_per_iter
    if widest > threshold:
        return f"smallest leak detectable ≈ {size(widest)}/iteration (the trend's CI; threshold {size(threshold)})"
    return f"smallest leak detectable ≈ {size(threshold)}/iteration (the threshold; trend CI ±{size(widest)})"


def measure(ctx, p) -> dict:
    from llmcheck.checks.leak.evidence import trends

    plan = _plan(ctx, p)
    if not plan.fits:
        raise Skip(plan.inconclusive())
    out = {}
    for phase in p.phases:
        measured = _run_phase(ctx, p, phase, plan.amount)
        measured["trends"] = {name: trends(measured["series"][name], p.confidence) for name in measured["series"]}
        measured["census_trend"] = _census_trend(measured)
        del measured["series"]  # the curves are in the samples
        out[phase] = measured
    plan.sensitivity = sensitivity(out, p)
    return {"phases": out, "iterations": plan.amount, "warmup": p.warmup, "plan": plan.to_json()}


def _census_trend(m: dict) -> dict:
    """Exact counter rule (CPython's refleak hunter): every census delta positive, and the mean
    growth per iteration."""
    its, sizes = m["census_iterations"], [c["bytes"] for c in m["census"]]
    deltas = [b - a for a, b in itertools.pairwise(sizes)]
    span = its[-1] - its[0] or 1
    return {
        "all_deltas_positive": bool(deltas) and all(d > 0 for d in deltas),
        "bytes_per_iteration": (sizes[-1] - sizes[0]) / span,
    }


def judge(m: dict, p) -> Verdict:
    from llmcheck.checks.leak.evidence import describe_clean, describe_leak, leaking

    problems, notes = [], []
    for phase, r in m["phases"].items():
        found = leaking(r, p)
        (problems if found else notes).append(
            describe_leak(phase, r, found, p) if found else describe_clean(phase, r, p)
        )
    if problems:
        return Verdict("failed", "; ".join(problems))
    planned = m.get("plan")
    return Verdict("passed", "; ".join(notes + ([planned["sentence"]] if planned else [])))


CHECK = Check(
    name="leak",
    family="leak",
    summary="memory per training and inference step does not grow (malloc heap, live tensors, RSS, CUDA allocated)",
    measure=measure,
    judge=judge,
    params={
        "iterations": Param(
            int, 60, "measured steps per phase, after the warm-up (fewer when budget_s affords fewer)", minimum=10
        ),
        "budget_s": budget.param(60.0, "warm-up and measured steps of both phases"),
        "warmup": Param(int, 10, "steps before measuring (optimizer state, allocator caches, lazy init)", minimum=1),
        "phases": Param(list, list(PHASES), "which loops to run", item_type=str, choices=PHASES),
        "max_bytes_per_iter": Param(float, 1024.0, "growth per step above which memory leaks (bytes)", minimum=0),
        "confidence": Param(
            float,
            0.99,
            "confidence of the Theil-Sen interval that must exclude zero growth",
            minimum=0.5,
            maximum=0.999999,
        ),
        "census_points": Param(
            int, 5, "gc censuses of live tensors per phase (each costs a full collection)", minimum=3
        ),
        "cuda_snapshot": Param(bool, True, "on CUDA, record allocation history and attach a memory snapshot"),
    },
)
