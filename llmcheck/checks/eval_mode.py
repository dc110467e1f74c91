"""eval: eval-mode outputs repeat exactly, do not depend on the grad mode, and survive a
train()/eval() round trip. Catches dropout or noise left active in eval and ``train()`` overrides
that leave state behind. The culprit is the first module (in execution order) whose output differs.

Repeats and the round trip run the same kernels and must be equal within ``atol`` (0: bit for bit).
Grad mode against no_grad or inference_mode may legitimately run other kernels (CPU ``nn.LSTM``
takes a fused path without autograd: 1.9e-8 apart on a 2-layer LSTM), so those two comparisons
also allow the outputs' dtype rounding: assert_close's ``atol + rtol * max |reference|``
(`llmcheck.target.closeness`); dropout left on moves outputs by orders of magnitude more.
"""

from __future__ import annotations

from llmcheck.registry import Check, Param
from llmcheck.results import Verdict
from llmcheck.target.equality import nan_problem

COMPARISONS = {
    "repeat": "two eval forwards",
    "no_grad": "grad mode vs torch.no_grad",
    "inference_mode": "grad mode vs torch.inference_mode",
    "toggle": "before vs after model.train(); model.eval()",
}
OTHER_KERNELS = ("no_grad", "inference_mode")  # may run other kernels than grad mode: dtype rounding allowed


def measure(ctx, p) -> dict:
    import torch

    from llmcheck.target.closeness import allowed as rounding
    from llmcheck.target.tensors import (
        first_divergence,
        first_nan_module,
        max_abs_diff,
        nan_report,
        record_module_outputs,
    )

    t = ctx.target
    model = t.build().eval()
    still_training = [name for name, mod in model.named_modules() if mod.training]
    batch = t.batch()

    def run(mode: str):
        guard = {"grad": torch.enable_grad, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}[mode]
        with guard():
            return record_module_outputs(model, lambda: t.logits(t.forward(model, batch)))

    base, base_rec = run("no_grad")
    again, again_rec = run("no_grad")
    grad, grad_rec = run("grad")
    infer, infer_rec = run("inference_mode")
    model.train()
    model.eval()
    toggled, toggled_rec = run("no_grad")
    pairs = {
        "repeat": (base, again, base_rec, again_rec),
        "no_grad": (grad, base, grad_rec, base_rec),
        "inference_mode": (grad, infer, grad_rec, infer_rec),
        "toggle": (base, toggled, base_rec, toggled_rec),
    }
    out = {"still_training": still_training, "comparisons": {}, "nan_module": first_nan_module(base_rec)}
    for name, (a, b, ra, rb) in pairs.items():
        d = max_abs_diff(a, b)
        tensors = torch.is_tensor(a) and torch.is_tensor(b)
        allowed = p.atol + (rounding(a.dtype, b) if name in OTHER_KERNELS and tensors else 0.0)
        culprit = first_divergence(ra, rb, allowed) if d > allowed else None
        out["comparisons"][name] = {
            "max_abs_diff": d,
            "allowed": allowed,
            "culprit": culprit[0] if culprit else None,
            "culprit_abs_diff": culprit[1] if culprit else None,
            "nan": nan_report(a, b),
        }
    return out


def judge(m: dict, p) -> Verdict:
    problems = []
    if m["still_training"]:
        problems.append(
            f"after model.eval() these modules still have training=True: {', '.join(m['still_training'][:5])}"
        )
    nan = [name for name, c in m["comparisons"].items() if c.get("nan")]
    if nan:  # one problem for every comparison NaN spoils, not one each
        first = m["comparisons"][nan[0]]["nan"]
        where = f"; first module whose output holds NaN: {m['nan_module']}" if m.get("nan_module") else ""
        problems.append(f"{', '.join(COMPARISONS[n] for n in nan)}: {nan_problem(first)}{where}")
    for name, c in m["comparisons"].items():
        allowed = c["allowed"]
        if c["max_abs_diff"] > allowed and name not in nan:
            where = (
                f"; first differing module: {c['culprit']} (max |Δ| = {c['culprit_abs_diff']:.3g})"
                if c["culprit"]
                else ""
            )
            problems.append(
                f"{COMPARISONS[name]}: outputs differ (max |Δ| = {c['max_abs_diff']:.3g} > {_limit(allowed, p)}){where}"
            )
    if problems:
        return Verdict("failed", "; ".join(problems))
    worst = max(m["comparisons"].values(), key=lambda c: c["max_abs_diff"])
    return Verdict(
        "passed",
        f"eval outputs equal across {len(m['comparisons'])} comparisons ({', '.join(COMPARISONS.values())}): "
        f"repeats and the round trip within atol {p.atol:g}, grad modes within dtype rounding; "
        f"largest |Δ| {worst['max_abs_diff']:.3g}",
    )


def _limit(allowed: float, p) -> str:
    return f"atol {p.atol:g}" if allowed == p.atol else f"{allowed:.3g} (atol {p.atol:g} + the outputs' dtype rounding)"


CHECK = Check(
    name="eval",
    family="eval",
    summary=(
        "eval outputs repeat exactly; no_grad and inference_mode equal grad mode; train/eval toggling leaves no trace"
    ),
    measure=measure,
    judge=judge,
    params={
        "atol": Param(
            float,
            0.0,
            "largest |Δ| allowed between outputs that must be equal (grad mode against no_grad and "
            "inference_mode also allows the dtype's rounding)",
            minimum=0,
        )
    },
)
