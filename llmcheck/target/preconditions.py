"""What a check's comparison rests on, confirmed first: the forward repeats, and its logits are finite.

A model with one bug (dropout left active in eval mode, NaN logits) would otherwise fail every check
that compares two forwards, each naming a culprit that is not the bug: a "causal leak", "outputs
differ after the round trip" (issue 14, point 6). A check whose judgement assumes the same forward
twice gives the same output calls `require_deterministic` near the top of ``measure``, one that
assumes finite outputs `require_finite`; when the model breaks the assumption they raise `Skip`
with an "inconclusive: ..." reason naming the first module where it shows and the check that
diagnoses it (eval for nondeterminism, gradient for non-finite outputs).

Cost: with the run's own model and batch (the defaults) one fresh model and two forwards per mode,
kept per worker process, so a model's checks share them. Module outputs are recorded only when a
precondition fails, to name the module. Every RNG is restored afterwards, so a check that calls
these draws the same random numbers as one that does not. Worker side (imports torch).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import torch

from llmcheck.results import Skip
from llmcheck.target.model import seed_everything
from llmcheck.target.steps import rng_state, set_rng_state
from llmcheck.target.tensors import first_nonfinite, model_dtype, record_module_outputs, tolerance

MODES = ("eval", "train")

# Facts about the default model and batch, per worker process (one worker serves one model file):
# the checks of a model ask the same question, and the answer does not change within a session.
_FACTS: dict[str, dict[str, Any] | None] = {}


def require_deterministic(
    t,
    model=None,
    batch=None,
    mode: str = "eval",
    *,
    seed: int | None = None,
    fresh: bool = False,
    atol: float | None = None,
) -> None:
    """Raise `Skip` ("inconclusive: ...") unless two identical forwards in ``mode`` (under no_grad)
    give the same logits within ``atol`` (default: the dtype's rounding tolerance).

    ``seed``: reseed every RNG with it before each call, for checks that replay their randomness
    (train-mode dropout is then legitimate). ``fresh``: each call on a newly built model, for checks
    that compare fresh models (state a model carries from call to call is then not nondeterminism).
    """
    facts = _facts(t, model, batch, mode, seed, fresh)
    if facts is None:
        return
    limit = facts["tolerance"] if atol is None else atol
    if facts["diff"] > limit:
        raise Skip(_nondeterministic(facts, mode, seed, limit))


def require_finite(
    t, model=None, batch=None, mode: str = "eval", *, seed: int | None = None, fresh: bool = False
) -> None:
    """Raise `Skip` ("inconclusive: ...") when the plain forward in ``mode`` returns NaN or inf logits.
    ``seed`` and ``fresh`` as for `require_deterministic`: with the same values both share two calls."""
    facts = _facts(t, model, batch, mode, seed, fresh)
    if facts is not None and facts["nonfinite"]:
        n = facts["nonfinite"]
        module = f"; first module with a non-finite output: {n['module']}" if n["module"] else ""
        raise Skip(
            f"inconclusive: the forward returns non-finite logits ({n['count']} of {n['total']} values "
            f"NaN or inf in {mode} mode, first at logits index {n['index']}{module}); "
            f"the gradient check diagnoses this"
        )


def _nondeterministic(facts: dict[str, Any], mode: str, seed: int | None, limit: float) -> str:
    calls = "two identical calls" if seed is None else "two identical calls with every RNG seeded alike"
    where = f", first at module {facts['module']}" if facts["module"] else ""
    if facts["seeded_equal"]:
        where += "; one seed reproduces them, so random numbers are drawn (dropout or noise)"
    else:
        where += "; one seed does not reproduce them: state carried from call to call, or a nondeterministic kernel"
    if mode == "eval":
        pointer = "the eval check diagnoses this"
    else:
        seeded = " under one seed" if seed is not None else ""
        pointer = f"this check compares train-mode forwards, which must repeat{seeded}"
    return (
        f"inconclusive: the forward is not deterministic in {mode} mode ({calls} differ by "
        f"max |Δ| = {facts['diff']:.3g} > {limit:.3g}{where}); {pointer}"
    )


def _facts(t, model, batch, mode: str, seed: int | None, fresh: bool) -> dict[str, Any] | None:
    """What two calls show (cached for the default model and batch); None when the forward cannot
    run here, so the check goes on and reports that itself."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    if fresh and model is not None:
        raise ValueError("fresh=True builds its own models; pass no model")
    key = None
    if model is None and batch is None:
        key = json.dumps([str(t.path), t.name, dict(t.settings), mode, seed, fresh], sort_keys=True, default=str)
        if key in _FACTS:
            return _FACTS[key]
    saved = rng_state()
    try:
        found = _observe(t, model, batch, mode, seed, fresh)
    except Exception:  # the user's forward fails here: the check meets that itself and reports it
        found = None
    finally:
        set_rng_state(saved)
    if key is not None:
        _FACTS[key] = found
    return found


def _observe(t, model, batch, mode: str, seed: int | None, fresh: bool) -> dict[str, Any]:
    shared = t.build() if model is None else model
    unused = [shared] if fresh else []  # every build is seeded alike: the first serves one call
    models: Callable[[], Any] = (lambda: unused.pop() if unused else t.build()) if fresh else (lambda: shared)
    batch = t.batch() if batch is None else batch

    def call(record: bool = False, reseed: int | None = seed):
        return _forward(t, models(), batch, mode, reseed, record)

    (a, _), (b, _) = call(), call()
    facts = {
        "diff": _repeat_diff(a, b),
        "tolerance": tolerance(model_dtype(shared), a),
        "nonfinite": _nonfinite(a, call) if a.is_floating_point() else None,
        "module": None,
        "seeded_equal": None,
    }
    if facts["diff"] > 0:  # name the first module that differs, and whether one seed reproduces it
        (_, ra), (_, rb) = call(record=True), call(record=True)
        facts["module"] = next((name for (name, x), (_, y) in zip(ra, rb) if _repeat_diff(x, y) > 0), None)
        if seed is None:
            facts["seeded_equal"] = _repeat_diff(call(reseed=t.seed)[0], call(reseed=t.seed)[0]) == 0
    return facts


def _repeat_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| between two calls that should repeat: a NaN or infinity in the same place in
    both is a repeat (finiteness is `require_finite`'s question); NaN on one side only is inf."""
    if a.shape != b.shape:
        return float("inf")
    if a.numel() == 0:
        return 0.0
    a, b = a.detach().float(), b.detach().float()
    same = (a == b) | (torch.isnan(a) & torch.isnan(b))
    return float((a - b).abs().masked_fill(same, 0.0).nan_to_num(nan=float("inf")).max())


def _nonfinite(logits: torch.Tensor, call) -> dict[str, Any] | None:
    bad = ~torch.isfinite(logits)
    if not bad.any():
        return None
    _, recorded = call(record=True)
    index = [int(i) for i in bad.nonzero()[0]]
    return {"count": int(bad.sum()), "total": bad.numel(), "index": index, "module": first_nonfinite(recorded)}


def _forward(t, model, batch, mode: str, seed: int | None, record: bool):
    """(logits, [(module, output)] when recording) of one no_grad call in ``mode``; every
    submodule's own mode is restored afterwards."""
    was_training = {m: m.training for m in model.modules()}
    model.train(mode == "train")
    try:
        if seed is not None:
            seed_everything(seed)
        with torch.no_grad():
            run = lambda: t.logits(t.forward(model, batch))  # noqa: E731
            return record_module_outputs(model, run) if record else (run(), [])
    finally:
        for m, flag in was_training.items():
            m.training = flag
