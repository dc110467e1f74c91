"""checkpointing: gradient checkpointing recomputes the forward and leaves the gradients unchanged.

For models with a switch: Hugging Face's ``gradient_checkpointing_enable()`` (called with
``use_reentrant`` from the parameters), or a boolean ``gradient_checkpointing`` attribute on the
model or a submodule that its forward reads before calling ``torch.utils.checkpoint``. One
training step's loss and gradients (train mode, dropout on, every RNG seeded the same before each
forward) are taken without and with checkpointing. With it, some modules' forwards must run again
during backward (the recomputation, counted with forward hooks); the same parameters must get
non-zero gradients, and every gradient must equal the one without checkpointing within
assert_close's tolerance for the dtype (`llmcheck.target.closeness`). Catches a switch that
checkpoints nothing and a checkpointed block whose recomputation differs from its forward: fresh
dropout masks drawn without restoring the RNG state (``preserve_rng_state=False``), state that the
forward mutates.
"""

from __future__ import annotations

from typing import Any

from llmcheck.registry import Check, Param
from llmcheck.results import Skip, Verdict

SEED_OFFSET = 17  # every RNG is seeded with t.seed + SEED_OFFSET before each compared forward


def _flagged(model) -> list[str]:
    return [
        n or "<root>" for n, m in model.named_modules() if isinstance(getattr(m, "gradient_checkpointing", None), bool)
    ]


def _switch(model) -> str | None:
    if callable(getattr(model, "gradient_checkpointing_enable", None)):
        return "gradient_checkpointing_enable()"
    flagged = _flagged(model)
    return f"gradient_checkpointing = True on {', '.join(flagged[:3])}" if flagged else None


def _enable(model, use_reentrant: bool) -> None:
    enable = getattr(model, "gradient_checkpointing_enable", None)
    if callable(enable):
        try:
            enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
        except TypeError:  # a model's own method without Hugging Face's keyword
            enable()
        return
    for m in model.modules():
        if isinstance(getattr(m, "gradient_checkpointing", None), bool):
            m.gradient_checkpointing = True


def _step(t, batch, checkpointing: bool, p) -> tuple[float, dict, dict[str, dict[str, int]], list[str]]:
    """(loss, gradients, forward calls per module in the forward and in the backward phase,
    active dropout modules)."""
    from llmcheck.target.closeness import gradients
    from llmcheck.target.model import seed_everything

    model = t.build().train()
    if checkpointing:
        _enable(model, p.use_reentrant)
    calls: dict[str, dict[str, int]] = {"forward": {}, "backward": {}}
    phase = ["forward"]

    def count(name: str) -> None:
        calls[phase[0]][name] = calls[phase[0]].get(name, 0) + 1

    handles = [
        m.register_forward_pre_hook(lambda mod, args, name=name: count(name))
        for name, m in model.named_modules()
        if name
    ]
    try:
        seed_everything(t.seed + SEED_OFFSET)  # the same dropout draws in both runs' forwards
        loss, _ = t.loss(model, batch)
        phase[0] = "backward"
        loss.backward()
    finally:
        for h in handles:
            h.remove()
    return float(loss.detach()), gradients(model), calls, _dropouts(model)


def _dropouts(model) -> list[str]:
    import torch

    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0]


def _recomputed_blocks(names: list[str]) -> list[str]:
    """The modules that hold the recomputed ones: the parents of those none of whose ancestors
    re-ran (a checkpointed block's own call is not repeated, its layers' are)."""
    chosen = set(names)
    outer = [n for n in names if not any(n.startswith(a + ".") for a in chosen if a != n)]
    return sorted({n.rpartition(".")[0] or n for n in outer})


def measure(ctx, p) -> dict:
    from llmcheck.target.closeness import compare_gradients
    from llmcheck.target.tensors import model_dtype

    t = ctx.target
    probe = t.build()
    switch = _switch(probe)
    if switch is None:
        raise Skip(
            f"{t.name} has no gradient checkpointing switch: define gradient_checkpointing_enable() or a boolean "
            "gradient_checkpointing attribute that the forward reads to call torch.utils.checkpoint"
        )
    from llmcheck.target.preconditions import require_deterministic, require_finite

    # both steps replay one seed on fresh models in train mode (_step): dropout is fine, irreproducible noise is not
    require_finite(t, mode="train", seed=t.seed + SEED_OFFSET, fresh=True)
    require_deterministic(t, mode="train", seed=t.seed + SEED_OFFSET, fresh=True)
    batch = t.batch()
    ctx.progress(step="without checkpointing")
    loss, want, _, _ = _step(t, batch, False, p)
    ctx.progress(step="with checkpointing")
    loss_ckpt, got, calls, dropouts = _step(t, batch, True, p)
    rerun = _recomputed_blocks(sorted(calls["backward"]))
    out: dict[str, Any] = {
        "switch": switch,
        "use_reentrant": p.use_reentrant,
        "loss": loss,
        "loss_checkpointed": loss_ckpt,
        "rerun_modules": rerun,
        "rerun_count": len(calls["backward"]),
        "rerun_dropouts": [d for d in dropouts if d in calls["backward"]],
    }
    out["gradients"] = compare_gradients(got, want, model_dtype(probe), p.tolerance_scale)
    return out


def judge(m: dict, p) -> Verdict:
    via, g = f"gradient checkpointing via {m['switch']}", m["gradients"]
    if not m["rerun_modules"]:
        return Verdict(
            "failed",
            f"{via} recomputed nothing: no module's forward ran again during backward, so nothing was checkpointed "
            "(the forward must call torch.utils.checkpoint when the switch is on, in train mode)",
        )
    problems = []
    for key, side in (("nonzero_only_without", "without"), ("nonzero_only_with", "with")):
        if g[key]:
            problems.append(f"only {side} checkpointing do {', '.join(g[key][:5])} get a non-zero gradient")
    if g["over_count"]:
        w = g["over_tolerance"][0]
        text = (
            f"{g['over_count']} of {g['parameters']} gradients differ from those without checkpointing; worst "
            f"{w['parameter']}: max |Δ| = {w['max_abs_diff']:.3g} > tolerance {w['tolerance']:.3g}"
        )
        if m["rerun_dropouts"]:
            text += (
                f"; the recomputed forward draws dropout ({', '.join(m['rerun_dropouts'][:3])}): it must restore "
                "the RNG state (torch.utils.checkpoint(..., preserve_rng_state=True), the default)"
            )
        problems.append(text)
    blocks = ", ".join(m["rerun_modules"][:4]) + (" ..." if len(m["rerun_modules"]) > 4 else "")
    if problems:
        return Verdict("failed", f"{via} (recomputed: {blocks}): " + "; ".join(problems))
    w = g["worst"] or {"max_abs_diff": 0.0, "tolerance": 0.0}
    return Verdict(
        "passed",
        f"{via}: {m['rerun_count']} modules' forwards re-ran during backward (in {blocks}); the same {g['parameters']} "
        f"parameters get non-zero gradients, equal to those without checkpointing (worst |Δ| = "
        f"{w['max_abs_diff']:.3g} <= {w['tolerance']:.3g}); loss {m['loss']:.6g} without, "
        f"{m['loss_checkpointed']:.6g} with",
    )


CHECK = Check(
    name="checkpointing",
    family="checkpointing",
    summary="gradient checkpointing re-runs the forward in backward and leaves every gradient unchanged",
    measure=measure,
    judge=judge,
    params={
        "use_reentrant": Param(bool, False, "use_reentrant passed to Hugging Face's gradient_checkpointing_enable"),
        "tolerance_scale": Param(
            float, 1.0, "multiplies the dtype's tolerance (assert_close's atol + rtol * max |gradient|)", minimum=0
        ),
    },
)
