"""training: a short training run, or a stored training log, shows no divergence, no loss spikes,
no dead start and no over-fitting gap, and the learning rate follows the declared schedule.

Live mode trains ``steps`` steps (or until ``time_budget`` seconds) with the model file's
@llmcheck.optimizer and scheduler on @llmcheck.train_data, evaluating on @llmcheck.eval_data every
``eval_every`` steps. Log mode (``log = PATH``) reads a CSV or JSON-lines log of step, loss, lr and
val_loss instead, so CI can gate on last night's run. Both modes give the same curves and the same
pure judgements below apply to them. Catches a learning rate that diverges, a warm-up that never
reaches its peak, a schedule that hits zero mid-run and a model that learns nothing.
"""

from __future__ import annotations

import math
from statistics import fmean, median

from llmcheck.measuring import budget
from llmcheck.registry import Check, Param
from llmcheck.results import Skip, Verdict

MIN_STEPS = 20  # the start and end windows, the spike window and three evaluations need a run this long


# -- judgements: pure functions of the curves, shared by both modes ------------------------------
def _window(n: int, p) -> int:
    return max(1, min(p.window, n // 4))


def divergence_index(loss: list[float], p) -> int | None:
    """Index of the first non-finite loss, or of the first loss above explode_factor x the first."""
    for i, v in enumerate(loss):
        if not math.isfinite(v):
            return i
    if loss[0] > 0:
        return next((i for i, v in enumerate(loss) if v > p.explode_factor * loss[0]), None)
    return None


def divergence(steps, loss, p) -> tuple[str | None, str | None]:
    i = divergence_index(loss, p)
    if i is None:
        return None, None
    if not math.isfinite(loss[i]):
        return f"diverged: loss is {loss[i]} at step {steps[i]} (the first non-finite value)", None
    return (
        f"diverged: loss {loss[i]:.4g} at step {steps[i]} is {loss[i] / loss[0]:.3g}x the first loss "
        f"{loss[0]:.4g} (step {steps[0]}; limit {p.explode_factor:g}x)"
    ), None


def _norm_median(norms, i: int, w: int) -> str:
    return f", median {median(norms[i - w : i]):.3g}" if i >= w else ""


def spikes(steps, loss, p, norms=()) -> tuple[str | None, str | None]:
    """Losses above ``spike_factor`` x the running median; with the live run's gradient norms, each
    names the step's gradient norm (before clipping) against the median of the window."""
    end = divergence_index(loss, p)
    end = len(loss) if end is None else end
    w = _window(len(loss), p)
    found = []
    for i in range(w, end):
        ref = median(loss[i - w : i])
        if ref > 0 and loss[i] > p.spike_factor * ref:
            norm = f" (gradient norm {norms[i]:.3g}{_norm_median(norms, i, w)})" if len(norms) > i else ""
            found.append(f"step {steps[i]}: {loss[i]:.4g} = {loss[i] / ref:.1f}x the median {ref:.4g}{norm}")
    rule = f"> {p.spike_factor:g}x the median of the previous {w} steps"
    if len(found) > p.max_spikes:
        more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
        return (f"{len(found)} loss spike(s) {rule} (limit {p.max_spikes}): " + "; ".join(found[:3]) + more), None
    return None, f"{len(found)} loss spike(s) {rule}"


def plateau(steps, loss, p) -> tuple[str | None, str | None]:
    if divergence_index(loss, p) is not None or len(loss) < 2:
        return None, None
    w = _window(len(loss), p)
    first, last = fmean(loss[:w]), fmean(loss[-w:])
    drop = (first - last) / abs(first) if first else 0.0
    text = (
        f"loss {first:.4g} -> {last:.4g} (means of the first and last {w} steps) over steps "
        f"{steps[0]}-{steps[-1]}: {drop:.1%} drop"
    )
    if drop < p.min_improvement:
        return f"nothing learned: {text}, need >= {p.min_improvement:.0%}", None
    return None, text


def _train_mean_at(steps, loss, step: int, w: int) -> float:
    upto = [v for s, v in zip(steps, loss) if s <= step] or loss[:1]
    return fmean(upto[-w:])


def overfitting(steps, loss, val_steps, val_loss, p) -> tuple[str | None, str | None]:
    finite = [(s, v) for s, v in zip(val_steps, val_loss) if math.isfinite(v)]
    if len(finite) < 3:
        return None, f"over-fitting not judged: {len(finite)} validation point(s), need >= 3"
    j = min(range(len(finite)), key=lambda k: finite[k][1])
    (best_step, best), (last_step, last) = finite[j], finite[-1]
    w = _window(len(loss), p)
    rise = (last - best) / abs(best) if best else 0.0
    train_then, train_now = _train_mean_at(steps, loss, best_step, w), _train_mean_at(steps, loss, last_step, w)
    if rise > p.overfit_rise and train_now < train_then:
        return (
            f"over-fitting: val_loss rose {best:.4g} (step {best_step}) -> {last:.4g} (step {last_step}), "
            f"+{rise:.0%} (limit {p.overfit_rise:.0%}), while training loss fell {train_then:.4g} -> {train_now:.4g}"
        ), None
    return None, f"val_loss {finite[0][1]:.4g} -> {last:.4g} (best {best:.4g} at step {best_step})"


def _warmup_end(lr_steps, lr, p) -> int | None:
    """Index where a declared warm-up (warmup_steps >= 0) ends, when the curve reaches that far."""
    if p.warmup_steps < 0:
        return None
    return next((i for i, s in enumerate(lr_steps) if s >= lr_steps[0] + p.warmup_steps), None)


def lr_schedule(lr_steps, lr, peak, p, peak_source: str = "") -> tuple[str | None, str | None]:
    if not lr:
        return None, "learning-rate schedule not judged: no lr recorded"
    bad = next((i for i, v in enumerate(lr) if not math.isfinite(v) or v < 0), None)
    if bad is not None:
        return f"learning rate is {lr[bad]:.4g} at step {lr_steps[bad]} (must be finite and positive)", None
    zeros = [lr_steps[i] for i in range(1, len(lr) - 1) if lr[i] == 0]
    if zeros:
        return (
            f"learning rate is 0 at step {zeros[0]} ({len(zeros)} step(s) in all) where training is expected "
            f"(only the first step of a warm-up and the last step of a decay may be 0)"
        ), None
    target = peak if peak else max(lr)
    origin = f" (from {peak_source})" if peak and peak_source else ("" if peak else " (the largest lr seen)")
    end = _warmup_end(lr_steps, lr, p)
    if end is not None and lr[end] < (1 - p.lr_rtol) * target:
        return (
            f"warm-up does not reach its peak: lr at step {lr_steps[end]} (warmup_steps = {p.warmup_steps}) is "
            f"{lr[end]:.4g} = {lr[end] / target:.1%} of the peak {target:.4g}{origin} (need >= {1 - p.lr_rtol:.0%})"
        ), None
    top = max(range(len(lr)), key=lr.__getitem__)
    if top == len(lr) - 1 and len(lr) > 1 and lr[-1] > lr[-2]:
        return None, f"lr still rising at the last step {lr_steps[-1]} ({lr[-1]:.4g}); warm-up peak not judged"
    if peak and lr[top] < (1 - p.lr_rtol) * peak:
        return (
            f"warm-up does not reach its peak: the learning rate tops out at {lr[top]:.4g} (step {lr_steps[top]}) "
            f"= {lr[top] / peak:.1%} of the declared peak {peak:.4g}{origin} (need >= {1 - p.lr_rtol:.0%})"
        ), None
    declared = f"; at warmup_steps = {p.warmup_steps}: {lr[end] / target:.0%} of the peak" if end is not None else ""
    return None, f"lr {lr[0]:.3g} -> peak {lr[top]:.3g} (step {lr_steps[top]}) -> {lr[-1]:.3g}{declared}"


def clipping(m: dict) -> tuple[str | None, str | None]:
    """A note on the gradient norms of the live run: how often clipping acted, and the largest."""
    norms, limit = m.get("grad_norm") or [], m.get("max_grad_norm") or 0.0
    if not norms:
        return None, None
    top = max(range(len(norms)), key=norms.__getitem__)
    largest = f"largest {norms[top]:.3g} at step {m['steps'][top]}"
    if not limit:
        return None, f"gradients not clipped (training.max_grad_norm = 0): total norm {largest}"
    clipped = sum(n > limit for n in norms)
    return None, (
        f"gradients clipped to total norm {limit:g} on {clipped} of {len(norms)} steps ({largest}; "
        "training.max_grad_norm = 0 trains without clipping)"
    )


def judge(m: dict, p) -> Verdict:
    findings = [
        divergence(m["steps"], m["loss"], p),
        spikes(m["steps"], m["loss"], p, m.get("grad_norm") or ()),
        plateau(m["steps"], m["loss"], p),
        overfitting(m["steps"], m["loss"], m["val_steps"], m["val_loss"], p)
        if m["val_steps"]
        else (None, "over-fitting not judged: no validation curve (declare @llmcheck.eval_data)"),
        lr_schedule(m["lr_steps"], m["lr"], m["peak_lr"], p, m["peak_source"]),
        clipping(m),
    ]
    problems = [f for f, _ in findings if f]
    notes = [n for _, n in findings if n]
    where = f"{m['source']}: {len(m['loss'])} steps" + (f", stopped early ({m['stopped']})" if m.get("stopped") else "")
    if m.get("plan") and m["plan"]["cut"]:
        where += f" ({m['plan']['sentence']})"
    if problems:
        return Verdict("failed", f"{where}: " + "; ".join(problems))
    return Verdict("passed", f"{where}: " + "; ".join(notes))


# -- measurement ---------------------------------------------------------------------------------
def _declared_peak(optimizer, p) -> tuple[float | None, str]:
    if p.peak_lr:
        return p.peak_lr, "training.peak_lr"
    group = optimizer.param_groups[0]
    for key in ("max_lr", "initial_lr", "lr"):  # OneCycleLR's max_lr, any scheduler's initial_lr
        if isinstance(group.get(key), (int, float)):
            return float(group[key]), f"param group 0 {key}"
    return None, ""


def _evaluate(t, model, batches) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        value = fmean(float(t.loss(model, b)[0]) for b in batches)
    model.train()
    return value


def _live(ctx, p) -> dict:
    import itertools
    import time

    from llmcheck.target.batches import batches, declared
    from llmcheck.target.model import seed_everything
    from llmcheck.target.steps import train_step

    t = ctx.target
    if not declared(t, "train"):
        raise Skip(
            "no @llmcheck.train_data in the model file: declare one (an iterable of training batches), "
            "or set training.log = PATH to judge a stored training log"
        )
    model = t.build().train()
    opt, sched = t.optimizer(model, p.lr)
    peak, peak_source = _declared_peak(opt, p)
    held_out = list(batches(t, "eval", limit=p.eval_batches)) if declared(t, "eval") else []
    seed_everything(t.seed + 7)
    stream = batches(t, "train", cycle=True)
    first = next(stream)
    plan = _plan(ctx, p, first, len(held_out))
    if not plan.fits:
        raise Skip(plan.inconclusive())
    m = {
        "mode": "run",
        "source": "training run",
        "steps": [],
        "loss": [],
        "lr_steps": [],
        "lr": [],
        "val_steps": [],
        "val_loss": [],
        "peak_lr": peak,
        "peak_source": peak_source,
        "stopped": None,
        "plan": plan.to_json(),
        "max_grad_norm": p.max_grad_norm,
        "grad_norm": [],  # each step's total gradient norm before clipping
    }
    started, stream = time.perf_counter(), itertools.chain([first], stream)
    for i in range(plan.amount):
        if held_out and i % p.eval_every == 0:
            m["val_steps"].append(i)
            m["val_loss"].append(_evaluate(t, model, held_out))
        m["lr_steps"].append(i)
        m["lr"].append(float(opt.param_groups[0]["lr"]))
        m["steps"].append(i)
        m["loss"].append(train_step(t, model, opt, sched, next(stream), p.max_grad_norm, m["grad_norm"]))
        ctx.progress(step=i, loss=m["loss"][-1])
        m["stopped"] = _stop_reason(m["loss"], p, time.perf_counter() - started)
        if m["stopped"]:
            break
    if held_out and m["val_steps"][-1] != len(m["steps"]) and divergence_index(m["loss"], p) is None:
        m["val_steps"].append(len(m["steps"]))
        m["val_loss"].append(_evaluate(t, model, held_out))
    return m


def _plan(ctx, p, first, held_out: int) -> budget.Plan:
    """Steps that fit ``budget_s``: a training step on a batch the size of the first one, plus its
    share of the evaluations (``held_out`` forwards every ``eval_every`` steps)."""
    t = ctx.target
    costs = budget.step_costs(t)
    ids = t.tokens(first)
    tokens = ids.numel() if ids is not None else costs.get("tokens") or 1
    step = budget.train_at(costs, tokens)
    evals = budget.forward_at(costs, tokens)
    unit = None if step is None else step + (held_out * (evals or 0.0)) / p.eval_every
    return budget.plan(ctx, "training steps", unit, MIN_STEPS, p.steps, budget.allowed(p), check="training")


def _stop_reason(loss: list[float], p, elapsed: float) -> str | None:
    """Why the live run stops after this step: divergence (nothing more to learn) or the time budget."""
    if not math.isfinite(loss[-1]):
        return f"non-finite loss at step {len(loss) - 1}"
    if loss[0] > 0 and loss[-1] > p.explode_factor * loss[0]:
        return f"loss exploded at step {len(loss) - 1}"
    if p.time_budget and elapsed > p.time_budget:
        return f"time budget of {p.time_budget:g} s"
    return None


def _from_log(p) -> dict:
    from llmcheck.checks.training.log import read_log

    curves = read_log(p.log)
    return {
        "mode": "log",
        "source": f"log {p.log}",
        **curves,
        "peak_lr": p.peak_lr or None,
        "peak_source": "training.peak_lr" if p.peak_lr else "",
        "stopped": None,
    }


def measure(ctx, p) -> dict:
    m = _from_log(p) if p.log else _live(ctx, p)
    for name in ("loss", "lr", "val_loss", "grad_norm"):
        if m.get(name):
            ctx.record_samples(name, m[name])
    return m


CHECK = Check(
    name="training",
    family="training",
    summary="a short run (or a stored log) has no divergence, spikes, dead start or over-fitting gap; LR as declared",
    measure=measure,
    judge=judge,
    params={
        "steps": Param(int, 100, "training steps of the live run (fewer when budget_s affords fewer)", minimum=1),
        "budget_s": budget.param(60.0, "live run (its steps and evaluations)"),
        "time_budget": Param(float, 0.0, "seconds after which the live run stops early (0: no limit)", minimum=0),
        "eval_every": Param(int, 20, "steps between evaluations on eval_data", minimum=1),
        "eval_batches": Param(int, 4, "eval_data batches per evaluation", minimum=1),
        "lr": Param(float, 1e-3, "learning rate of the default AdamW (ignored with @llmcheck.optimizer)", minimum=0),
        "log": Param(str, "", "path of a CSV or JSON-lines training log to judge instead of running (empty: run)"),
        "window": Param(int, 10, "steps in the running window for spikes and the start/end loss means", minimum=1),
        "explode_factor": Param(
            float, 4.0, "loss above this multiple of the first loss counts as divergence", minimum=1
        ),
        "spike_factor": Param(float, 2.0, "loss above this multiple of the running median is a spike", minimum=1),
        "max_spikes": Param(int, 0, "spikes allowed", minimum=0),
        "max_grad_norm": Param(
            float,
            1.0,
            "clip the gradients' total norm to this before each step of the live run, as HF Trainer "
            "(max_grad_norm=1.0) and nanoGPT (grad_clip=1.0) do by default (0: no clipping)",
            minimum=0,
        ),
        "min_improvement": Param(
            float, 0.05, "fraction by which the loss must fall from start to end", minimum=0, maximum=1
        ),
        "overfit_rise": Param(
            float, 0.1, "rise of val_loss above its best, while training loss falls, that fails", minimum=0
        ),
        "warmup_steps": Param(
            int, -1, "steps by which the warm-up must reach the peak lr (-1: not declared)", minimum=-1
        ),
        "peak_lr": Param(
            float, 0.0, "the peak learning rate (0: the optimizer's max_lr/initial_lr; log mode: none)", minimum=0
        ),
        "lr_rtol": Param(
            float, 0.01, "relative shortfall from the peak lr that still counts as reaching it", minimum=0, maximum=1
        ),
    },
)
