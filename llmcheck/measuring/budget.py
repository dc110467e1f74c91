"""Work planned from a measured step cost: how many iterations, steps, samples or sizes a check can
afford within its ``budget_s``, never fewer than the statistical floor its judgement needs.

Most checks repeat work (leak iterations, overfitting steps, fuzz examples, timed samples). A fixed
amount costs milliseconds on a small model and minutes on a 124M-parameter one, so each such
check asks `step_costs` for the model's forward and training-step time on the default batch
(measured once per worker process and model, kept on the `Target`) and `plan` turns a unit cost,
a floor, the amount wanted and the budget into the amount to do and a sentence for the report:
``planned 40 of 60 iterations per phase in 12 s budget (0.28 s each): ...``. When the floor does not
fit, the plan says so (`Plan.inconclusive`) and the check skips or notes it, as its page says.

Worker side: `step_costs` imports torch inside the function; `plan` and `Plan` are pure.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from llmcheck.registry import Param

TIMED_CALLS = 3  # timed calls per kind after one warm-up call, fewer when one call is slow ...
TIMING_CAP_S = 2.0  # ... so that measuring the costs stays within about this many seconds
TIMEOUT_SHARE = 0.8  # a budget never plans past this share of the check's timeout
STARTUP_GUESS_S = 2.0  # a fresh process importing torch, when the worker did not time its own start
LONGER = 4  # the second timed forward has this many times the default batch's tokens


def param(default: float, what: str) -> Param:
    """A check's ``budget_s`` parameter: seconds its ``what`` is planned to fit."""
    return Param(
        float,
        default,
        f"seconds planned for the {what}, from the model's measured step time (never past "
        f"{TIMEOUT_SHARE:.0%} of the timeout); when even the check's floor does not fit, it says so",
        minimum=0.1,
    )


def allowed(p) -> tuple[float, str]:
    """(seconds, which setting bounds them): ``budget_s``, or 80% of the timeout when smaller."""
    cap = TIMEOUT_SHARE * float(p.timeout)
    if cap < float(p.budget_s):
        return cap, f"{TIMEOUT_SHARE:.0%} of timeout {p.timeout:g} s"
    return float(p.budget_s), f"budget_s {p.budget_s:g} s"


# -- the model's measured costs ------------------------------------------------------------------
def step_costs(t, train: bool = True) -> dict[str, Any]:
    """The model's costs on the run's default batch, measured on the first call and kept on the target
    (the worker hands the same dict to every check of one model): ``forward_s`` (eval, no_grad),
    ``train_step_s`` (forward, backward, optimizer step; None when nothing trains, absent until a
    check asks with ``train``), ``build_s``, ``tokens`` (batch x length they were measured at),
    ``forward_long_s`` at ``tokens_long`` (`LONGER` times as many: the per-token slope, `forward_at`),
    ``seconds`` (what measuring them took), ``startup_s`` (a fresh process importing torch) and
    ``import_s`` (the model file's import). ``error`` names why a cost is missing (the user's code
    raised: the check meets that itself).

    ``train=False`` leaves the training step out: a worker whose checks only run forwards (the extra
    latency processes) never creates an optimizer, whose first use imports torch._dynamo (seconds)."""
    cache = t.step_costs
    key = json.dumps([t.name, dict(t.settings)], sort_keys=True, default=str)
    if key not in cache:
        process = cache.get("process") or {}  # the worker's own start-up, when it timed it (isolation.child)
        cache[key] = {
            "seconds": 0.0,
            "built_s": 0.0,
            "startup_s": process.get("startup_s"),
            "import_s": process.get("import_s"),
        }
        _measure(t, cache[key], train=False)
    if train and "train_step_s" not in cache[key]:
        _measure(t, cache[key], train=True)
    return cache[key]


def _timed(fn: Callable[[], Any], sync: Callable[[], None]) -> float:
    """Median seconds of ``fn()`` after one warm-up call (lazy initialisation, allocator, the first
    optimizer step's imports); after a warm-up slower than the cap, one timed call is enough."""
    started = time.perf_counter()
    fn()
    sync()
    more = 0.0 if time.perf_counter() - started > TIMING_CAP_S else TIMING_CAP_S / 2  # slow: one call
    times: list[float] = []
    spent = 0.0
    while len(times) < TIMED_CALLS and (not times or spent < more):
        started = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - started)
        spent += times[-1]
    return sorted(times)[len(times) // 2]


def _measure(t, out: dict[str, Any], train: bool) -> None:
    from llmcheck.target.steps import rng_state, set_rng_state

    began, built = time.perf_counter(), t.build_s
    saved = rng_state()  # a check that plans draws the same random numbers as one that does not
    try:
        (_time_train if train else _time_forward)(t, out)
    except Exception as exc:  # the user's code raised: the check runs and reports it itself
        out["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    finally:
        set_rng_state(saved)
        out.setdefault("forward_s", None)
        if train:
            out.setdefault("train_step_s", None)
    out["seconds"] += time.perf_counter() - began  # what measuring took (the report's plan phase) ...
    out["built_s"] += t.build_s - built  # ... of which building models


def _sync(t) -> Callable[[], None]:
    import torch

    return (lambda: torch.cuda.synchronize(t.device)) if t.device.type == "cuda" else (lambda: None)


def _time_forward(t, out: dict[str, Any]) -> None:
    """Build one model and time its eval forward on the default batch, and on one of LONGER times
    its tokens (a longer sequence, else a larger batch), into ``out``."""
    import torch

    started = time.perf_counter()
    model = t.build().eval()
    out["build_s"] = time.perf_counter() - started
    batch = t.batch()
    bs, sl = t.shape()
    out["tokens"] = bs * sl
    with torch.no_grad():
        out["forward_s"] = _timed(lambda: t.forward(model, batch), _sync(t))
        long_bs, long_sl = t.shape(bs, LONGER * sl)
        long_bs = long_bs if long_sl > sl else LONGER * bs  # the length is capped at max_seq_len
        try:
            longer = t.batch(long_bs, long_sl)
            out["forward_long_s"] = _timed(lambda: t.forward(model, longer), _sync(t))
            out["tokens_long"] = long_bs * long_sl
        except Exception:  # an inputs hook that cannot make this shape: costs scale linearly instead
            out["forward_long_s"] = None


def _time_train(t, out: dict[str, Any]) -> None:
    """Build one model and time a training step (the declared or default optimizer) into ``out``."""
    from llmcheck.target.steps import train_step

    model = t.build().train()
    out["train_step_s"] = None
    if any(q.requires_grad for q in model.parameters()):
        batch = t.batch()
        opt, _ = t.optimizer(model)
        out["train_step_s"] = _timed(lambda: train_step(t, model, opt, None, batch), _sync(t))


def per_token(costs: dict[str, Any]) -> float | None:
    """Seconds a forward takes per token beyond the default batch: the slope between the two timed
    forwards (a small model's call is mostly fixed overhead), or linear in the tokens when only one
    was timed."""
    f1, n1 = costs.get("forward_s"), costs.get("tokens")
    if f1 is None or not n1:
        return None
    f2, n2 = costs.get("forward_long_s"), costs.get("tokens_long")
    if f2 is None or not n2 or n2 <= n1:
        return f1 / n1
    return max(0.0, (f2 - f1) / (n2 - n1))


def forward_at(costs: dict[str, Any], tokens: float) -> float | None:
    """An eval forward on ``tokens`` tokens: the measured cost, plus the per-token slope above the
    default batch (never below the measured cost: small calls are overhead-bound)."""
    slope = per_token(costs)
    if costs.get("forward_s") is None or slope is None:
        return None
    return costs["forward_s"] + slope * max(0.0, tokens - costs["tokens"])


def train_at(costs: dict[str, Any], tokens: float) -> float | None:
    """A training step on ``tokens`` tokens: the measured step (or three forwards when nothing was
    trained) plus three times the forward's per-token slope above the default batch (a backward
    costs about twice a forward; the optimizer step does not grow with the batch)."""
    step = train_or_forward(costs)
    slope = per_token(costs)
    if step is None or slope is None:
        return None
    return step + 3 * slope * max(0.0, tokens - costs["tokens"])


def train_or_forward(costs: dict[str, Any]) -> float | None:
    """The training-step cost, or three forwards (forward plus a backward of twice its cost) when
    the model trains nothing."""
    if costs.get("train_step_s") is not None:
        return costs["train_step_s"]
    return None if costs.get("forward_s") is None else 3 * costs["forward_s"]


# -- the plan ------------------------------------------------------------------------------------
@dataclass
class Plan:
    """How much of a check's repeated work fits its budget, and what that amount buys."""

    check: str  # the check's name, for the setting named in messages (leak.budget_s)
    what: str  # the unit of work, plural: "iterations per phase", "overfitting steps"
    amount: int  # what is done: the wanted amount, or less to fit, never below the floor
    wanted: int
    floor: int  # the least the judgement needs
    unit_cost_s: float | None  # seconds per unit (None: not measured, the wanted amount is done)
    fixed_s: float  # seconds the work costs whatever the amount (warm-up, censuses)
    budget_s: float
    budget_source: str
    fits: bool  # the floor fits the budget
    sensitivity: str = ""  # what the amount buys: "smallest leak detectable ≈ 3 KiB/iteration"

    @property
    def cut(self) -> bool:
        """Whether the budget made the amount smaller than wanted."""
        return self.amount < self.wanted

    def estimate_s(self, amount: int | None = None) -> float | None:
        n = self.amount if amount is None else amount
        return None if self.unit_cost_s is None else self.fixed_s + n * self.unit_cost_s

    def sentence(self) -> str:
        """``planned 40 of 60 iterations per phase in 12 s budget (0.28 s each): <sensitivity>``."""
        if not self.fits:
            return self.inconclusive()
        amount = f"{self.amount} of {self.wanted}" if self.cut else f"{self.amount}"
        each = "step time not measured" if self.unit_cost_s is None else f"{_s(self.unit_cost_s)} each"
        text = f"planned {amount} {self.what} in {self.budget_s:.3g} s budget ({each})"
        return text + (f": {self.sensitivity}" if self.sensitivity else "")

    def inconclusive(self) -> str:
        """The reason a check gives when even the floor does not fit the budget."""
        need = self.estimate_s(self.floor) or 0.0
        return (
            f"inconclusive: needs at least {self.floor} {self.what} of {_s(self.unit_cost_s or 0.0)}"
            f"{f' plus {_s(self.fixed_s)}' if self.fixed_s >= 0.05 else ''} = {need:.3g} s > budget "
            f"{self.budget_s:.3g} s ({self.budget_source}); raise {self.check}.budget_s"
        )

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "cut": self.cut, "estimate_s": self.estimate_s(), "sentence": self.sentence()}


def _s(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms" if seconds < 0.1 else f"{seconds:.3g} s"


def plan(
    ctx,
    what: str,
    unit_cost_s: float | None,
    floor: int,
    wanted: int,
    budget_s: float | tuple[float, str],
    *,
    fixed_s: float = 0.0,
    check: str = "",
    sensitivity: Callable[[int], str] | str = "",
) -> Plan:
    """The amount of ``what`` to do: ``wanted``, or as many as ``budget_s`` affords at
    ``unit_cost_s`` each after ``fixed_s``, but never below ``floor`` (``fits`` is False then, and
    the amount is the floor). Without a measured cost the wanted amount is planned. ``budget_s`` may
    be `allowed`'s (seconds, source); the plan is sent to the parent as a heartbeat."""
    seconds, source = budget_s if isinstance(budget_s, tuple) else (float(budget_s), f"budget_s {budget_s:g} s")
    floor = min(floor, wanted)  # a user who asks for less than the floor gets what they asked for
    amount, fits = wanted, True
    if unit_cost_s is not None and unit_cost_s > 0:
        affordable = math.floor(max(0.0, seconds - fixed_s) / unit_cost_s)
        amount = max(floor, min(wanted, affordable))
        fits = affordable >= floor
    found = Plan(check or "check", what, amount, wanted, floor, unit_cost_s, fixed_s, seconds, source, fits)
    found.sensitivity = sensitivity(amount) if callable(sensitivity) else sensitivity
    if ctx is not None:
        ctx.progress(planned=amount, of=wanted, unit=what, budget_s=round(seconds, 3))
    return found


def plan_prefix(
    ctx,
    what: str,
    unit_costs: list[float | None],
    floor: int,
    budget_s: float | tuple[float, str],
    *,
    fixed_s: float = 0.0,
    check: str = "",
    sensitivity: Callable[[int], str] | str = "",
) -> Plan:
    """`plan` for work whose units cost differently (a sweep's sizes, cheapest first): the amount is
    the longest prefix of ``unit_costs`` that fits after ``fixed_s``, never below ``floor``.
    The plan's unit cost is the prefix's mean (any unknown cost: the whole list is planned)."""
    if not unit_costs or any(c is None for c in unit_costs):
        return plan(ctx, what, None, floor, len(unit_costs), budget_s, fixed_s=fixed_s, check=check)
    seconds = budget_s[0] if isinstance(budget_s, tuple) else float(budget_s)
    spent, fit = fixed_s, 0
    for cost in unit_costs:
        if spent + cost > seconds:
            break
        spent, fit = spent + cost, fit + 1
    n = max(fit, min(floor, len(unit_costs)), 1)
    mean = sum(unit_costs[:n]) / n
    found = plan(ctx, what, mean, floor, len(unit_costs), budget_s, fixed_s=fixed_s, check=check)
    found.amount, found.fits = max(min(floor, len(unit_costs)), fit), fit >= min(floor, len(unit_costs))
    found.sensitivity = sensitivity(found.amount) if callable(sensitivity) else sensitivity
    return found
