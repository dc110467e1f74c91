"""gradient: the loss is finite and near ln(vocab) at init, every trainable parameter gets a
finite, non-zero gradient, and a few steps on one batch overfit it. Catches dead parameters,
detached branches, NaN gradients and badly scaled initialisation. Metrics carry a per-parameter
gradient-norm table.
"""

from __future__ import annotations

import math
import time

from llmcheck.measuring import budget
from llmcheck.registry import Check, Param
from llmcheck.results import Verdict

CE_LOSSES = ("next-token cross-entropy", "model")  # losses whose value at init should be ~ ln(vocab)
MIN_OVERFIT_STEPS = 10  # fewer steps cannot show a model learning one batch


def _anomaly_origin(t, model, batch) -> str | None:
    """The forward line that produced the first non-finite gradient, from autograd anomaly mode."""
    import warnings

    import torch

    with warnings.catch_warnings(record=True) as caught, torch.autograd.detect_anomaly():
        warnings.simplefilter("always")
        try:
            loss, _ = t.loss(model, batch)
            loss.backward()
        except RuntimeError as exc:
            trace = "\n".join(str(w.message) for w in caught if "Traceback of forward call" in str(w.message))
            lines = [ln.strip() for ln in trace.splitlines() if ln.strip().startswith("File ")]
            user = [ln for ln in lines if "site-packages" not in ln and "/llmcheck/" not in ln]
            origin = (user or lines or [""])[-1]
            return f"{str(exc).splitlines()[0]} {origin}".strip()
    return None


def _gradients(ctx, p) -> dict:
    import torch

    from llmcheck.target.tensors import first_nonfinite, record_module_outputs

    t = ctx.target
    model = t.build().train()
    batch = t.batch()
    (loss, kind), recorded = record_module_outputs(model, lambda: t.loss(model, batch))
    value = float(loss.detach())
    out = {"loss": value, "loss_kind": kind, "expected_init_loss": t.uniform_loss() if kind in CE_LOSSES else None}
    if not math.isfinite(value):
        out["nonfinite_origin"] = first_nonfinite(recorded)
        return out
    loss.backward()
    trainable = {n: q for n, q in model.named_parameters() if q.requires_grad}
    norms, missing, nonfinite, zero = {}, [], {}, []
    for name, q in trainable.items():
        if q.grad is None:
            missing.append(name)
            norms[name] = None
            continue
        bad = int((~torch.isfinite(q.grad)).sum())
        if bad:
            nonfinite[name] = bad
        elif not q.grad.any():
            zero.append(name)
        norms[name] = float(q.grad.float().norm())
    out.update(
        trainable=len(trainable),
        grad_norms=norms,
        no_gradient=missing,
        nonfinite_gradient=nonfinite,
        zero_gradient=zero,
        numel={n: q.numel() for n, q in trainable.items()},
    )
    if nonfinite:
        out["nonfinite_origin"] = _anomaly_origin(t, t.build().train(), batch)
    return out


def _overfit_plan(ctx, p, spent_s: float) -> budget.Plan:
    """Overfitting steps that fit what ``budget_s`` leaves after the gradient checks (``spent_s``)."""
    t = ctx.target
    costs = budget.step_costs(t)
    unit = budget.train_at(costs, p.overfit_batch_size * t.shape()[1])
    seconds, source = budget.allowed(p)
    left = (max(0.0, seconds - spent_s), f"{source} less {spent_s:.2g} s for the gradients")
    return budget.plan(ctx, "overfitting steps", unit, MIN_OVERFIT_STEPS, p.overfit_steps, left, check="gradient")


def _overfit(ctx, p, steps: int) -> dict:
    import torch

    from llmcheck.target.model import seed_everything
    from llmcheck.target.steps import train_step

    t = ctx.target
    model = t.build().train()
    batch = t.batch(batch_size=p.overfit_batch_size)
    opt = torch.optim.Adam((q for q in model.parameters() if q.requires_grad), lr=p.overfit_lr)
    seed_everything(t.seed + 11)
    losses = []
    for i in range(steps + 1):
        if i % 10 == 0:
            ctx.progress(overfit_step=i)
        if i == steps:
            loss, _ = t.loss(model, batch)
            losses.append(float(loss.detach()))
        else:
            losses.append(train_step(t, model, opt, None, batch))
    return {"overfit_losses": losses}


def measure(ctx, p) -> dict:
    started = time.perf_counter()
    out = _gradients(ctx, p)
    if math.isfinite(out["loss"]) and not out.get("nonfinite_gradient") and out["trainable"]:
        plan = _overfit_plan(ctx, p, time.perf_counter() - started)
        out["plan"] = plan.to_json()
        if plan.fits:
            out.update(_overfit(ctx, p, plan.amount))
    return out


def _overfit_note(m: dict, p) -> tuple[str | None, str | None]:
    """(problem, note) of the overfitting run. A run the budget cut short can show that the model
    learns, never that it does not: a drop below the limit in fewer steps than wanted is a note."""
    losses, plan = m.get("overfit_losses"), m.get("plan")
    if plan and not plan["fits"]:
        return None, f"overfitting not judged: {plan['sentence']}"
    if not losses:
        return None, None
    first, last = losses[0], losses[-1]
    drop = (first - last) / first if first > 0 else float("nan")
    text = (
        f"overfitting one batch: loss {first:.4g} -> {last:.4g} in {len(losses) - 1} steps "
        f"({drop:.0%} drop, need >= {p.min_loss_drop:.0%})"
    )
    cut = plan is not None and plan["cut"]
    if cut:
        text += f" ({plan['sentence']})"
    if first <= 0:
        return None, text + " [not judged: the loss is not positive]"
    if drop >= p.min_loss_drop:
        return None, text
    if cut:
        return None, text + " [not judged: the budget cut the run short; raise gradient.budget_s]"
    return text, None


def judge(m: dict, p) -> Verdict:
    if not math.isfinite(m["loss"]):
        origin = (
            f"; first module with a non-finite output: {m['nonfinite_origin']}" if m.get("nonfinite_origin") else ""
        )
        return Verdict("failed", f"loss at init is {m['loss']} ({m['loss_kind']}){origin}")
    problems = [f"parameter {n} received no gradient" for n in m["no_gradient"]]
    problems += [
        f"parameter {n} has {k} non-finite gradient value(s) of {m['numel'][n]}"
        for n, k in m["nonfinite_gradient"].items()
    ]
    if m.get("nonfinite_origin"):
        problems.append(f"anomaly mode: {m['nonfinite_origin']}")
    problems += [f"parameter {n} has an all-zero gradient" for n in m["zero_gradient"]]
    notes = []
    expected = m["expected_init_loss"]
    if expected is not None:
        rel = abs(m["loss"] - expected) / expected
        text = (
            f"loss at init {m['loss']:.4g} vs ln(vocab) = {expected:.4g} ({rel:.0%} off, limit {p.init_loss_rtol:.0%})"
        )
        (problems if rel > p.init_loss_rtol else notes).append(text)
    problem, note = _overfit_note(m, p)
    problems += [problem] if problem else []
    notes += [note] if note else []
    if problems:
        return Verdict("failed", "; ".join(problems))
    return Verdict(
        "passed", f"all {m['trainable']} trainable parameters got finite, non-zero gradients; " + "; ".join(notes)
    )


CHECK = Check(
    name="gradient",
    family="gradient",
    summary=(
        "finite loss near ln(vocab) at init; every trainable parameter gets a finite non-zero gradient; "
        "one batch overfits"
    ),
    measure=measure,
    judge=judge,
    params={
        "init_loss_rtol": Param(
            float, 0.25, "allowed relative distance of the loss at init from ln(vocab_size)", minimum=0
        ),
        "overfit_steps": Param(int, 50, "Adam steps on one batch (fewer when budget_s affords fewer)", minimum=1),
        "overfit_lr": Param(float, 3e-3, "learning rate for the overfitting run", minimum=0),
        "overfit_batch_size": Param(int, 2, "size of the batch to overfit", minimum=1),
        "min_loss_drop": Param(
            float, 0.3, "fraction by which the loss must fall when overfitting", minimum=0, maximum=1
        ),
        "budget_s": budget.param(30.0, "gradient checks and the overfitting run"),
    },
)
