"""memory: peak memory of a training (or inference) step per batch size and sequence length, and
the largest batch size that fits under a limit. Catches out-of-memory at batch sizes users will
try, before they try them.

Peak is the process's peak RSS on CPU (its high-water mark, reset before each step through
``/proc/self/clear_refs``) and ``torch.cuda.max_memory_allocated`` on CUDA. The limit is the
device's memory on CUDA and, on CPU, ``budget_mb`` or else 90% of the memory available when the
check starts; in a worker, at most 90% of the worker's ``memory_limit``, which the watchdog
enforces on the worker's whole process tree by killing it. The largest batch is found by doubling
from 1, then bisection. An out-of-memory error at one size (``torch.OutOfMemoryError``,
``MemoryError``, an allocator's "out of memory") is a data point, not the end of the run; after a
CUDA OOM the harness replaces the worker. On CPU, a size whose peak, extrapolated from the largest
size that fitted, would pass 1.5x the limit or 90% of ``memory_limit`` is not run: the kernel or the
watchdog would kill the worker instead of the step raising.
"""

from __future__ import annotations

import gc
import re
import time
from collections.abc import Callable

from llmcheck.measuring import budget
from llmcheck.measuring.memory import cuda_peak, rss_peak
from llmcheck.registry import Check, Param
from llmcheck.results import Skip, Verdict

OOM_TEXT = re.compile(r"out of memory|can't allocate memory|not enough memory|failed to allocate", re.I)
MODES = ("train", "inference")


def out_of_memory(exc: BaseException) -> str | None:
    """ "Type: message" when ``exc`` (or the user error it wraps) is an out-of-memory error."""
    import torch

    for e in (exc, exc.__cause__):
        if isinstance(e, (torch.OutOfMemoryError, MemoryError)) or (
            isinstance(e, RuntimeError) and OOM_TEXT.search(str(e))
        ):
            return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    return None


HEADROOM = 0.9  # of the worker's memory_limit: the rest is for the tree's other processes and the step's spikes


def hard_limit(t) -> float | None:
    """Bytes a step may never be predicted to pass on CPU: 90% of the memory_limit the watchdog
    enforces on the worker (llmcheck.isolation.watchdog), when there is one."""
    enforced = t.settings.get("memory_limit_bytes")
    return HEADROOM * enforced if enforced and t.device.type != "cuda" else None


def run_cap(judged: float, hard: float | None) -> float:
    """The largest predicted peak worth running: 1.5x the judged limit (the prediction is linear and
    may overshoot), never past the hard limit, where the watchdog would kill the worker."""
    return 1.5 * judged if hard is None else min(1.5 * judged, hard)


def limit(t, p) -> tuple[float, str]:
    """(bytes, where the number comes from) that a step's peak must stay under."""
    import psutil
    import torch

    hard = hard_limit(t)
    if p.budget_mb > 0:
        budget = p.budget_mb * 2**20
        if hard is not None and hard < budget:
            return hard, f"90% of the worker's memory_limit (below budget_mb = {p.budget_mb:g})"
        return budget, f"budget_mb = {p.budget_mb:g}"
    if t.device.type == "cuda":
        return float(torch.cuda.mem_get_info(t.device)[1]), f"memory of {torch.cuda.get_device_name(t.device)}"
    if hard is not None:
        return hard, "90% of the worker's memory_limit"
    rss, available = psutil.Process().memory_info().rss, psutil.virtual_memory().available
    return rss + 0.9 * available, "RSS now + 90% of the memory available at the start"


class Runner:
    """Runs one step at a given size on one model and reports its peak or its OOM."""

    def __init__(self, ctx, p):
        self.ctx, self.t, self.p = ctx, ctx.target, p
        self.model = self.t.build().train(p.mode == "train")
        self.opt = self.t.optimizer(self.model)[0] if p.mode == "train" else None
        self.limit, self.limit_source = limit(self.t, p)
        self.run_cap = run_cap(self.limit, hard_limit(self.t))  # a size predicted above it is not run
        self.last_fit: dict | None = None  # the largest size that fitted, to extrapolate from
        self.last_timed: dict | None = None  # the largest size that ran, to extrapolate its time from
        self.started, self.seconds = time.perf_counter(), budget.allowed(p)
        self.stopped = ""  # why the search stopped before a step the budget could not afford

    def unaffordable(self, bs: int, sl: int) -> str | None:
        """Why a step at this size would not fit what is left of ``budget_s`` (its time extrapolated
        linearly in batch x length from the largest size that ran), or None."""
        last = self.last_timed
        if last is None:
            return None
        need = last["seconds"] * max(1.0, (bs * sl) / (last["batch_size"] * last["seq_len"]))
        left = self.seconds[0] - (time.perf_counter() - self.started)
        if need <= left:
            return None
        self.stopped = (
            f"batch {bs} x {sl} would take about {need:.2g} s, {max(0.0, left):.2g} s left of {self.seconds[1]}"
        )
        return self.stopped

    def predicted(self, bs: int, sl: int) -> float | None:
        """Peak extrapolated linearly in batch x length from the largest size that fitted (CPU
        only: there an over-large step is killed by the kernel instead of raising)."""
        last = self.last_fit
        if self.t.device.type == "cuda" or last is None:
            return None
        scale = (bs * sl) / (last["batch_size"] * last["seq_len"])
        return last["peak_bytes"] - last["step_bytes"] + last["step_bytes"] * scale

    def _step(self, batch):
        import torch

        from llmcheck.target.steps import train_step

        if self.opt is not None:
            train_step(self.t, self.model, self.opt, None, batch)
        else:
            with torch.no_grad():
                self.t.forward(self.model, batch)

    def measure(self, bs: int, sl: int) -> dict:
        from llmcheck.target.model import UserCodeError

        self.ctx.progress(batch_size=bs, seq_len=sl)
        out = {
            "batch_size": bs,
            "seq_len": sl,
            "peak_bytes": None,
            "step_bytes": None,
            "oom": None,
            "predicted_bytes": self.predicted(bs, sl),
        }
        if out["predicted_bytes"] is not None and out["predicted_bytes"] > self.run_cap:
            return {**out, "fits": False}  # not run: it would most likely be killed, by the kernel or the watchdog
        try:
            batch = self.t.batch(batch_size=bs, seq_len=sl)
            cuda = self.t.device.type == "cuda"
            started = time.perf_counter()
            peak, before = (
                cuda_peak(lambda: self._step(batch), self.t.device) if cuda else rss_peak(lambda: self._step(batch))
            )
            out.update(peak_bytes=peak, step_bytes=peak - before, seconds=time.perf_counter() - started)
            if self.last_timed is None or bs * sl >= self.last_timed["batch_size"] * self.last_timed["seq_len"]:
                self.last_timed = out
        except (UserCodeError, RuntimeError, MemoryError) as exc:
            out["oom"] = out_of_memory(exc)
            if out["oom"] is None:
                raise
        finally:
            batch = None
            self._release()
        out["fits"] = out["oom"] is None and out["peak_bytes"] <= self.limit
        if out["fits"] and (self.last_fit is None or bs * sl >= self.last_fit["batch_size"] * self.last_fit["seq_len"]):
            self.last_fit = out
        return out

    def _release(self) -> None:
        import torch

        if self.opt is not None:
            self.opt.zero_grad(set_to_none=True)
        gc.collect()
        if self.t.device.type == "cuda":
            torch.cuda.empty_cache()


def largest_batch(
    runner: Runner, seq_len: int, cap: int, unaffordable: Callable[[int, int], str | None] | None = None
) -> tuple[int, list[dict]]:
    """Largest batch size <= ``cap`` whose step fits, by doubling from 1 then bisection; and the
    steps tried. Sizes are assumed monotone: if b does not fit, nothing above it does. The search
    stops early, at the largest size found so far, before a size ``unaffordable`` gives a reason for."""
    tried, lo, hi, bs = [], 0, None, 1
    stop = unaffordable or (lambda bs, sl: None)
    while hi is None:
        if stop(bs, seq_len):
            return lo, tried
        r = runner.measure(bs, seq_len)
        tried.append(r)
        if not r["fits"]:
            hi = bs
        elif bs >= cap:
            return bs, tried
        else:
            lo, bs = bs, min(bs * 2, cap)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if stop(mid, seq_len):
            return lo, tried
        r = runner.measure(mid, seq_len)
        tried.append(r)
        lo, hi = (mid, hi) if r["fits"] else (lo, mid)
    return lo, tried


def _sweep_plan(ctx, p, sizes: list[tuple[int, int]]) -> budget.Plan:
    """The sweep must run whole (each size is judged): its steps' cost, linear in batch x length
    from the measured step time, against ``budget_s``."""
    t = ctx.target
    costs = budget.step_costs(t, train=p.mode == "train")
    cost = budget.train_at if p.mode == "train" else budget.forward_at
    return budget.plan_prefix(
        ctx,
        "sizes of the sweep",
        [cost(costs, bs * sl) for bs, sl in sizes],
        len(sizes),
        budget.allowed(p),
        check="memory",
    )


def measure(ctx, p) -> dict:
    t = ctx.target
    cap_len = t.traits.max_seq_len
    seq_lens = sorted({min(s, cap_len) if cap_len else s for s in p.seq_lens})
    sizes = [(bs, sl) for sl in seq_lens for bs in sorted(set(p.batch_sizes))]
    planned = _sweep_plan(ctx, p, sizes)
    if not planned.fits:
        raise Skip(planned.inconclusive() + " or list fewer memory.batch_sizes")
    runner = Runner(ctx, p)
    sweep = [runner.measure(bs, sl) for bs, sl in sizes]
    best, tried = largest_batch(runner, seq_lens[-1], p.max_batch_size, runner.unaffordable)
    stopped = runner.stopped
    if stopped and best < p.min_batch_size and all(r["fits"] for r in sweep):
        raise Skip(
            f"inconclusive: the search for the largest batch stopped at {best} < min_batch_size "
            f"{p.min_batch_size}: {stopped}; raise memory.budget_s"
        )
    first_fail = min((r for r in tried if not r["fits"]), key=lambda r: r["batch_size"], default=None)
    ctx.record_samples("sweep_peak_bytes", [r["peak_bytes"] or 0.0 for r in sweep])
    return {
        "mode": p.mode,
        "device": str(t.device),
        "limit_bytes": runner.limit,
        "limit_source": runner.limit_source,
        "sweep": sweep,
        "search_seq_len": seq_lens[-1],
        "max_batch_size": best,
        "search": tried,
        "first_failure": first_fail,
        "capped": best >= p.max_batch_size,
        "stopped": stopped,
        "plan": planned.to_json(),
    }


def _mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


def _why(r: dict, m: dict) -> str:
    if r["oom"]:
        return f"batch {r['batch_size']} x {r['seq_len']} raised {r['oom']}"
    if r["peak_bytes"] is None:
        return (
            f"batch {r['batch_size']} x {r['seq_len']} would need about {_mib(r['predicted_bytes'])} > limit "
            f"{_mib(m['limit_bytes'])} (extrapolated, not run)"
        )
    return f"batch {r['batch_size']} x {r['seq_len']} peaks at {_mib(r['peak_bytes'])} > limit {_mib(m['limit_bytes'])}"


def judge(m: dict, p) -> Verdict:
    problems = [_why(r, m) for r in m["sweep"] if not r["fits"]]
    best = m["max_batch_size"]
    if best < p.min_batch_size:
        problems.append(
            f"largest batch that fits at seq_len {m['search_seq_len']} is {best} < min_batch_size {p.min_batch_size}"
        )
    fail = m["first_failure"]
    bound = (
        f"; {_why(fail, m)}"
        if fail
        else f" (search capped at max_batch_size {p.max_batch_size})"
        if m["capped"]
        else f" (search stopped by the budget: {m['stopped']}; raise memory.budget_s)"
        if m.get("stopped")
        else ""
    )
    found = (
        f"largest batch that fits: {best} at seq_len {m['search_seq_len']} ({m['mode']} step, limit "
        f"{_mib(m['limit_bytes'])} from {m['limit_source']}){bound}"
    )
    table = ", ".join(
        f"{r['batch_size']}x{r['seq_len']}: {_mib(r['peak_bytes'])} (step +{_mib(r['step_bytes'])})"
        for r in m["sweep"]
        if r["fits"]
    )
    if problems:
        return Verdict("failed", "; ".join(problems) + f"; {found}")
    return Verdict("passed", f"{found}; peak per batch x seq_len: {table}")


CHECK = Check(
    name="memory",
    family="memory",
    summary="peak memory per batch size and sequence length; the largest batch that fits under the limit",
    measure=measure,
    judge=judge,
    params={
        "batch_sizes": Param(list, [1, 2, 4, 8], "batch sizes of the sweep (each must fit)", item_type=int, minimum=1),
        "seq_lens": Param(
            list,
            [16, 64],
            "sequence lengths of the sweep (capped at max_seq_len); the search uses the longest",
            item_type=int,
            minimum=1,
        ),
        "mode": Param(
            str, "train", "step to measure: train (forward, backward, optimizer) or inference", choices=MODES
        ),
        "budget_mb": Param(
            float,
            0.0,
            "memory limit in MiB (0: the device's memory on CUDA; on CPU 90% of the worker's memory_limit, "
            "or of available RAM outside a worker)",
            minimum=0,
        ),
        "max_batch_size": Param(int, 256, "largest batch size the search tries", minimum=1),
        "min_batch_size": Param(int, 1, "the check fails when the largest batch that fits is smaller", minimum=1),
        "budget_s": budget.param(60.0, "sweep and the search for the largest batch (the search stops early)"),
    },
)
