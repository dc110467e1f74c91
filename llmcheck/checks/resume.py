"""resume: training interrupted by a checkpoint continues exactly as if it never stopped.

Trains ``steps`` steps; at ``resume_at`` saves model, optimizer, scheduler and every RNG with
``torch.save``, loads that (``weights_only=True``) into a fresh model built from another seed,
and trains the remaining steps. Parameters must match the uninterrupted run after every step.
Catches counters, schedules and RNG streams that the checkpoint does not carry.
"""

from __future__ import annotations

from llmcheck.registry import Check, Param
from llmcheck.results import Verdict
from llmcheck.target.equality import nan_problem


def measure(ctx, p) -> dict:
    import torch

    from llmcheck.target.model import seed_everything
    from llmcheck.target.steps import rng_state, set_rng_state, train_step
    from llmcheck.target.tensors import changed, hidden_state, hidden_state_differences, nan_report, snapshot

    if not 0 < p.resume_at < p.steps:
        raise ValueError(f"resume.resume_at = {p.resume_at} must lie between 0 and resume.steps = {p.steps}")
    t = ctx.target
    from llmcheck.target.preconditions import require_deterministic, require_finite

    # both runs replay one seed from fresh models in train mode: dropout is fine, irreproducible noise is not
    require_finite(t, mode="train", seed=t.seed + 7, fresh=True)
    require_deterministic(t, mode="train", seed=t.seed + 7, fresh=True)
    batches = [t.batch(seed=i) for i in range(p.steps)]
    path = ctx.tmpdir / "resume.pt"

    reference = t.build().train()
    opt, sched = t.optimizer(reference, p.lr)
    seed_everything(t.seed + 7)  # dropout and other training randomness start from a known state
    after_step, saved_hidden, ref_losses = {}, {}, []
    for i in range(p.steps):
        if i == p.resume_at:
            torch.save(
                {
                    "model": reference.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict() if sched else None,
                    "rng": rng_state(),
                },
                path,
            )
            saved_hidden = hidden_state(reference)
        ctx.progress(run="uninterrupted", step=i + 1)
        ref_losses.append(train_step(t, reference, opt, sched, batches[i]))
        if i >= p.resume_at:
            after_step[i + 1] = snapshot(dict(reference.named_parameters()))
    del reference, opt, sched

    resumed = t.build(seed=t.seed + 1).train()
    opt, sched = t.optimizer(resumed, p.lr)
    state = torch.load(path, weights_only=True, map_location=t.device)
    resumed.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    if sched is not None and state["scheduler"] is not None:
        sched.load_state_dict(state["scheduler"])
    not_restored = hidden_state_differences(saved_hidden, hidden_state(resumed))
    set_rng_state(state["rng"])
    first, res_losses = None, []
    for i in range(p.resume_at, p.steps):
        ctx.progress(run="resumed", step=i + 1)
        res_losses.append(train_step(t, resumed, opt, sched, batches[i]))
        diff = changed(after_step[i + 1], dict(resumed.named_parameters()), p.atol)
        if diff and first is None:
            name = next(iter(diff))
            first = {"step": i + 1, "parameter": name, "max_abs_diff": diff[name], "n_parameters": len(diff)}
            first["nan"] = nan_report(after_step[i + 1][name], dict(resumed.named_parameters())[name])
    return {
        "steps": p.steps,
        "resume_at": p.resume_at,
        "first_divergence": first,
        "losses_uninterrupted": ref_losses,
        "losses_resumed": res_losses,
        "not_restored": not_restored,
        "scheduler": sched is not None,
        "checkpoint_bytes": path.stat().st_size,
    }


def judge(m: dict, p) -> Verdict:
    first = m["first_divergence"]
    if first is None:
        what = "model, optimizer" + (", scheduler" if m["scheduler"] else "") + " and RNG"
        return Verdict(
            "passed",
            f"resumed at step {m['resume_at']} of {m['steps']} from a checkpoint of {what}: "
            f"parameters match the uninterrupted run after every step (max |Δ| <= atol {p.atol:g})",
        )
    if first.get("nan"):
        sides = ("the uninterrupted run", "the resumed run")
        loss = next((i for i, x in enumerate(m["losses_uninterrupted"]) if _is_nan(x)), None)
        return Verdict(
            "failed",
            f"after resuming at step {m['resume_at']}, parameter {first['parameter']} at step {first['step']}: "
            + nan_problem(first["nan"], "the parameter", sides)
            + (f"; the training loss is NaN from step {loss + 1}" if loss is not None else ""),
        )
    hint = ""
    if m["not_restored"]:
        state = "; ".join(f"{k} ({v})" for k, v in list(m["not_restored"].items())[:5])
        hint = f"; state outside the checkpoint that differs after restore: {state}"
    return Verdict(
        "failed",
        f"after resuming at step {m['resume_at']}, parameter {first['parameter']} first differs "
        f"from the uninterrupted run at step {first['step']} (max |Δ| = {first['max_abs_diff']:.3g} "
        f"> atol {p.atol:g}; {first['n_parameters']} parameter(s) differ){hint}",
    )


def _is_nan(x) -> bool:
    """NaN as a float, or as the string strict JSON writes for it (a report read back)."""
    return x != x if isinstance(x, float) else x == "NaN"


CHECK = Check(
    name="resume",
    family="resume",
    summary="k steps, checkpoint model + optimizer + scheduler + RNG, restore fresh, continue: identical run",
    measure=measure,
    judge=judge,
    params={
        "steps": Param(int, 4, "training steps in all", minimum=2),
        "resume_at": Param(int, 2, "step after which the run is checkpointed and resumed", minimum=1),
        "lr": Param(float, 1e-3, "learning rate of the default AdamW (ignored with @llmcheck.optimizer)", minimum=0),
        "atol": Param(float, 0.0, "largest |Δ| allowed between resumed and uninterrupted parameters", minimum=0),
    },
)
