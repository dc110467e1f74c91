"""frozen: frozen parameters, and the buffers of modules whose parameters are all frozen, do not
change during training, and frozen parameters receive no gradient. Catches BatchNorm statistics
drifting in a frozen backbone and code that unfreezes or updates frozen weights.
"""

from __future__ import annotations

from llmcheck.registry import Check, Param
from llmcheck.results import Skip, Verdict
from llmcheck.target.equality import nan_problem


def frozen_modules(model) -> dict[str, object]:
    """Outermost modules that own parameters, all of them frozen."""
    found: dict[str, object] = {}
    for name, module in model.named_modules():
        params = list(module.parameters())
        if params and not any(q.requires_grad for q in params):
            if not any(name.startswith(f"{outer}.") or outer == "" for outer in found):
                found[name] = module
    return found


def measure(ctx, p) -> dict:
    from llmcheck.target.steps import train_step
    from llmcheck.target.tensors import changed, nan_report, snapshot

    t = ctx.target
    model = t.build()
    frozen = {n: q for n, q in model.named_parameters() if not q.requires_grad}
    if not frozen:
        raise Skip("no parameter has requires_grad=False: nothing is frozen, so there is nothing to protect")
    if all(not q.requires_grad for q in model.parameters()):
        raise Skip("every parameter is frozen: no training step can run, so there is nothing to compare")
    modules = frozen_modules(model)
    buffers = {f"{name}.{b}" if name else b: v for name, mod in modules.items() for b, v in mod.named_buffers()}
    params_before, buffers_before = snapshot(frozen), snapshot(buffers)
    model.train()
    opt, sched = t.optimizer(model, p.lr)  # over all parameters, frozen included, as users write it
    for i in range(p.steps):
        ctx.progress(step=i + 1)
        train_step(t, model, opt, sched, t.batch(seed=i))
    params_now = dict(model.named_parameters())
    buffers_now = {f"{name}.{b}" if name else b: v for name, mod in modules.items() for b, v in mod.named_buffers()}
    changed_params = changed(params_before, params_now, p.atol)
    changed_buffers = changed(buffers_before, buffers_now, p.atol)
    nan = {n: nan_report(params_before[n], params_now[n]) for n in changed_params if n in params_now}
    nan.update({n: nan_report(buffers_before[n], buffers_now[n]) for n in changed_buffers if n in buffers_now})
    return {
        "frozen_parameters": len(frozen),
        "frozen_modules": list(modules),
        "frozen_buffers": len(buffers),
        "changed_parameters": changed_params,
        "changed_buffers": changed_buffers,
        "nan": {n: r for n, r in nan.items() if r},  # changed because NaN is never equal: where it is
        "with_gradient": {n: float(q.grad.norm()) for n, q in frozen.items() if q.grad is not None},
        "unfrozen": [n for n, q in frozen.items() if q.requires_grad],
    }


def _owner(buffer: str, modules: list[str]) -> str:
    return max((m for m in modules if buffer.startswith(f"{m}.") or m == ""), key=len, default="")


def judge(m: dict, p) -> Verdict:
    nan, sides = m.get("nan") or {}, ("the state before training", "the state after")
    problems = [
        nan_problem(nan[n], f"frozen parameter {n}", sides)
        if n in nan
        else f"frozen parameter {n} changed (max |Δ| = {d:.3g})"
        for n, d in m["changed_parameters"].items()
    ]
    problems += [
        nan_problem(nan[n], f"buffer {n} of frozen module {_owner(n, m['frozen_modules']) or '<root>'}", sides)
        if n in nan
        else f"buffer {n} of frozen module {_owner(n, m['frozen_modules']) or '<root>'} changed "
        f"(max |Δ| = {d:.3g}); put frozen modules in eval() during training"
        for n, d in m["changed_buffers"].items()
    ]
    problems += [f"frozen parameter {n} received a gradient (norm {g:.3g})" for n, g in m["with_gradient"].items()]
    problems += [
        f"frozen parameter {n} has requires_grad=True after training (unfrozen by model code)" for n in m["unfrozen"]
    ]
    if problems:
        return Verdict(
            "failed", "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        )
    return Verdict(
        "passed",
        f"{m['frozen_parameters']} frozen parameter(s) and {m['frozen_buffers']} buffer(s) of "
        f"{len(m['frozen_modules'])} frozen module(s) unchanged after {p.steps} training steps; "
        f"no gradient reached them",
    )


CHECK = Check(
    name="frozen",
    family="frozen",
    summary="frozen parameters and buffers of frozen modules do not change in training and get no gradient",
    measure=measure,
    judge=judge,
    params={
        "steps": Param(int, 3, "training steps", minimum=1),
        "lr": Param(float, 1e-3, "learning rate of the default AdamW", minimum=0),
        "atol": Param(float, 0.0, "largest |Δ| allowed in frozen state", minimum=0),
    },
)
