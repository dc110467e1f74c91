"""compile: ``torch.compile(model)`` gives eager's outputs and gradients, without surprises in graphs.

One model in eval mode (dropout off: compiled code draws other random numbers), compiled once and
run in grad mode so that one graph serves everything: the compiled logits against eager's at the
run's batch; recompilations while the sequence length takes ``num_lengths`` values (a clean model
compiles once more, with a dynamic length, and then never again), with dynamo's guard failure as
the reason; every parameter's gradient of the loss through the compiled model against eager's;
and, only when dynamo broke the graph, ``torch._dynamo.explain`` for each break's reason and model
line. Catches code that behaves differently under compilation (a step skipped when
``torch.compiler.is_compiling()``), Python state that specialises the graph on each length, and
graph breaks (advisory; a failure with ``fullgraph``). Compile time is reported. Tolerances are
assert_close's per dtype (`llmcheck.target.closeness`).
"""

from __future__ import annotations

import time
from typing import Any

from llmcheck.registry import Check, Param
from llmcheck.results import Skip, Verdict
from llmcheck.target.source_lines import where

MODES = ("default", "reduce-overhead", "max-autotune")
BACKENDS = ("auto", "inductor", "aot_eager", "eager")


def variants(p) -> list[dict[str, Any]]:
    return [{"mode": m} for m in p.modes]


def _backend(p, device, mode: str) -> str:
    """``auto``: inductor on CUDA or for a non-default mode, aot_eager on CPU (inductor compiles
    C++ per graph there: ~30 s per graph for the example on two busy cores)."""
    if p.backend != "auto":
        return p.backend
    return "inductor" if device.type == "cuda" or mode != "default" else "aot_eager"


def _graph_breaks(model, batch) -> dict:
    import torch

    from llmcheck.target.source_lines import user_frame

    torch._dynamo.reset()
    try:
        with torch.no_grad():
            run = torch._dynamo.explain(model)
            found = run(**batch) if isinstance(batch, dict) else run(batch)
    finally:
        torch._dynamo.reset()
    breaks = [
        {"reason": str(b.reason).strip().splitlines()[0][:300], "where": user_frame(b.user_stack)}
        for b in found.break_reasons
    ]
    return {"graphs": found.graph_count, "breaks": breaks}


class _Compiles:
    """Dynamo's compilations while active, by frame id (``0/1``: frame 0, its second compile)."""

    def __init__(self):
        self.ids: list[str] = []

    def __call__(self, args) -> None:
        if args.callback_trigger.name == "DYNAMO":
            self.ids.append(args.compile_id)

    def per_frame(self, since: int = 0) -> dict[str, int]:
        counts: dict[str, int] = {}
        for cid in self.ids[since:]:
            frame = cid.split("/")[0]
            counts[frame] = counts.get(frame, 0) + 1
        return counts


def _compile_index(reason: str) -> tuple[int, ...]:
    """``0/7: tensor ...`` -> (0, 7): guard failures sort by the cache entry they failed."""
    head = reason.split(":", 1)[0]
    return tuple(int(x) for x in head.split("/") if x.isdigit())


def _recompile_reasons() -> list[dict]:
    """Dynamo's guard failures since they were last cleared, per compiled function."""
    from torch._dynamo.utils import guard_failures

    return [
        {
            "function": code.co_name,
            "where": {"file": code.co_filename, "line": code.co_firstlineno, "function": code.co_name, "code": ""},
            "reasons": sorted((str(r).strip()[:300] for r in reasons), key=_compile_index)[-3:],
        }
        for code, reasons in guard_failures.items()
    ]


def _lengths(t, p) -> list[int]:
    """``num_lengths`` sequence lengths from 3 up to max_seq_len (else twice the run's length), at
    most four times the run's length (a real model's 2048 positions would cost more than they
    tell); none equal to the batch size, whose equal value dynamo would tie to the length."""
    bs, sl = t.shape()
    top = min(t.traits.max_seq_len or 2 * sl, 4 * sl)
    n = p.num_lengths
    found = sorted({round(3 + (top - 3) * i / max(n - 1, 1)) for i in range(n)} - {bs, sl})
    return [length for length in found if 3 <= length <= top]


def _logits(t, fn, batch, cudagraphs: bool):
    import torch

    if cudagraphs:  # CUDA graph outputs are overwritten by the next replay: copy them now
        torch.compiler.cudagraph_mark_step_begin()
    return t.logits(t.forward(fn, batch)).detach().clone()


def _outputs(ctx, t, model, compiled, batch, p, counter, cudagraphs) -> dict:
    import torch
    from torch._dynamo.utils import guard_failures

    from llmcheck.target.closeness import allowed, difference
    from llmcheck.target.tensors import model_dtype

    dtype, out = model_dtype(model), {"lengths": {}}
    # With gradients to compare, run in grad mode: the graph compiled here then also serves the
    # backward (a grad-mode switch would make dynamo compile the forward once more).
    with torch.set_grad_enabled(p.gradients):
        ref = t.logits(t.forward(model, batch))
        start = time.perf_counter()
        got = _logits(t, compiled, batch, cudagraphs)
        out["compile_s"] = time.perf_counter() - start
        out["base"] = {**difference(got, ref), "tolerance": allowed(dtype, ref, p.tolerance_scale)}
        guard_failures.clear()  # recompilations count from here: the lengths only
        first = len(counter.ids)
        for length in _lengths(t, p):
            ctx.progress(length=length)
            b = t.batch(seq_len=length)
            ref = t.logits(t.forward(model, b))
            got = _logits(t, compiled, b, cudagraphs)
            out["lengths"][length] = {**difference(got, ref), "tolerance": allowed(dtype, ref, p.tolerance_scale)}
        out["recompiles"] = counter.per_frame(first)
        out["recompile_reasons"] = _recompile_reasons()
    return out


def _gradients(t, model, compiled, batch, p, cudagraphs) -> dict:
    import torch

    from llmcheck.target.closeness import compare_gradients, gradients
    from llmcheck.target.tensors import model_dtype

    model.zero_grad(set_to_none=True)
    t.loss(model, batch)[0].backward()
    want = gradients(model)
    model.zero_grad(set_to_none=True)
    if cudagraphs:
        torch.compiler.cudagraph_mark_step_begin()
    start = time.perf_counter()
    t.loss(compiled, batch)[0].backward()
    found = compare_gradients(gradients(model), want, model_dtype(model), p.tolerance_scale)
    return {**found, "compile_s": time.perf_counter() - start}


def _compiled_runs(ctx, t, model, batch, p, out: dict) -> bool:
    """Outputs, recompiles and gradients through ``torch.compile``; True when dynamo broke the
    graph (or, under fullgraph, refused to compile), so that the breaks are worth locating."""
    import torch
    from torch._dynamo.callback import callback_handler
    from torch._dynamo.utils import counters

    counter, cudagraphs = _Compiles(), out["mode"] == "reduce-overhead"
    torch._dynamo.reset()
    counters.clear()
    callback_handler.register_start_callback(counter)
    try:
        options = {} if out["backend"] != "inductor" else {"mode": out["mode"]}
        compiled = torch.compile(model, backend=out["backend"], fullgraph=p.fullgraph, **options)
        ctx.progress(step="outputs")
        try:
            out["outputs"] = _outputs(ctx, t, model, compiled, batch, p, counter, cudagraphs)
        except Exception as exc:
            if p.fullgraph:  # a graph break refuses fullgraph compilation: explain locates it below
                out["fullgraph_error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
                return True
            raise
        if p.gradients:
            ctx.progress(step="gradients")
            out["gradients"] = _gradients(t, model, compiled, batch, p, cudagraphs)
        return bool(counters["graph_break"] or counters["unimplemented"])
    finally:
        callback_handler.remove_start_callback(counter)
        torch._dynamo.reset()  # the worker is reused: leave no compiled code or guards behind


def measure(ctx, p) -> dict:
    from llmcheck.target.tensors import model_dtype

    t = ctx.target
    mode = (ctx.variant or variants(p)[0])["mode"]
    if mode == "reduce-overhead" and t.device.type != "cuda":
        raise Skip(f"mode='reduce-overhead' captures CUDA graphs and needs a CUDA device (device = {t.device})")
    from llmcheck.target.preconditions import require_deterministic, require_finite

    require_finite(t)  # compiled outputs and gradients are judged against eager's eval forward: finite, repeating
    require_deterministic(t)
    model, batch = t.build().eval(), t.batch()
    out: dict[str, Any] = {
        "mode": mode,
        "backend": _backend(p, t.device, mode),
        "dtype": str(model_dtype(model)).split(".")[-1],
        "breaks": [],
    }
    broke = _compiled_runs(ctx, t, model, batch, p, out)
    if broke:  # explain traces the forward once more; a clean model does not pay for it
        ctx.progress(step="graph breaks")
        out.update(_graph_breaks(model, batch))
        if out.get("fullgraph_error") and not out["breaks"]:
            raise RuntimeError(f"torch.compile(fullgraph=True) failed without a graph break: {out['fullgraph_error']}")
    return out


# Dynamo's terse reasons, said in words (torch/_dynamo/symbolic_convert.py generic_jump).
HINTS = {"generic_jump": "a Python branch on a tensor's value (data-dependent control flow)"}


def _break_text(b: dict) -> str:
    hint = next((h for key, h in HINTS.items() if b["reason"].startswith(key)), None)
    return f"{where(b['where'])}: {b['reason']}" + (f" [{hint}]" if hint else "")


def _output_problems(o: dict) -> list[str]:
    runs = [("the run's batch", o["base"])] + [(f"length {n}", r) for n, r in o["lengths"].items()]
    bad = [(label, r) for label, r in runs if r["max_abs_diff"] > r["tolerance"]]
    if not bad:
        return []
    label, r = bad[0]
    at = f" at index {r['index']}" if r.get("index") else ""
    return [
        f"compiled logits differ from eager at {len(bad)} of {len(runs)} sequence lengths (first: {label}, "
        f"max |Δ| = {r['max_abs_diff']:.3g} > tolerance {r['tolerance']:.3g}{at})"
    ]


def _gradient_problems(g: dict) -> list[str]:
    problems = []
    for key, side in (("nonzero_only_without", "eager only"), ("nonzero_only_with", "compiled only")):
        if g[key]:
            problems.append(f"non-zero gradient for {', '.join(g[key][:5])} under {side}")
    if g["over_count"]:
        w = g["over_tolerance"][0]
        problems.append(
            f"{g['over_count']} of {g['parameters']} parameters' compiled gradients differ from eager; worst "
            f"{w['parameter']}: max |Δ| = {w['max_abs_diff']:.3g} > tolerance {w['tolerance']:.3g}"
        )
    return problems


def _recompile_problem(o: dict, budget: int) -> str | None:
    frames = o["recompiles"]
    worst = max(frames.values(), default=0)
    if worst <= budget:
        return None
    why = "; ".join(f"{where(r['where'])}: {r['reasons'][-1]}" for r in o["recompile_reasons"] if r["reasons"])
    return f"{worst} recompilations of one frame across sequence lengths {list(o['lengths'])} > budget {budget}" + (
        f" (last guard failure: {why})" if why else ""
    )


def judge(m: dict, p) -> Verdict:
    breaks = m["breaks"]
    summary = f"{len(breaks)} graph break(s)" + (": " + "; ".join(map(_break_text, breaks[:3])) if breaks else "")
    if p.fullgraph and breaks:
        return Verdict("failed", f"fullgraph: {summary}")
    o, g = m["outputs"], m.get("gradients")
    problems = _output_problems(o) + (_gradient_problems(g) if g else [])
    recompiles = _recompile_problem(o, p.max_recompiles)
    if recompiles:
        problems.append(recompiles)
    head = f"torch.compile (backend {m['backend']}, mode {m['mode']}, {m['dtype']})"
    advisory = (f"{summary} (fullgraph = true gates them)",) if breaks else ()  # slow, not wrong
    if problems:
        return Verdict("failed", f"{head}: " + "; ".join(problems) + f"; {summary}", advisory)
    worst = max([o["base"]["max_abs_diff"]] + [r["max_abs_diff"] for r in o["lengths"].values()])
    grads = (
        f", gradients of {g['parameters']} parameters within tolerance (worst {g['worst']['parameter']} "
        f"|Δ| = {g['worst']['max_abs_diff']:.3g} <= {g['worst']['tolerance']:.3g})"
        if g and g["worst"]
        else ""
    )
    recompiled = max(o["recompiles"].values(), default=0)
    return Verdict(
        "passed",
        f"{head} equals eager: logits max |Δ| = {worst:.3g} <= {o['base']['tolerance']:.3g} at "
        f"{1 + len(o['lengths'])} sequence lengths{grads}; {recompiled} recompilation(s) across lengths "
        f"{list(o['lengths'])} (budget {p.max_recompiles}); {summary}; compile {o['compile_s']:.1f} s",
        advisory,
    )


CHECK = Check(
    name="compile",
    family="compile",
    summary="torch.compile gives eager's outputs and gradients; graph breaks with their lines; recompiles in budget",
    measure=measure,
    judge=judge,
    variants=variants,
    params={
        "modes": Param(
            list,
            ["default", "reduce-overhead"],
            "torch.compile modes, one item each (reduce-overhead captures CUDA graphs: CUDA only)",
            item_type=str,
            choices=MODES,
        ),
        "backend": Param(
            str,
            "auto",
            "compiler backend; auto: inductor on CUDA or for a non-default mode, aot_eager on CPU",
            choices=BACKENDS,
        ),
        "fullgraph": Param(bool, False, "compile with fullgraph=True: any graph break fails the check"),
        "num_lengths": Param(
            int, 8, "sequence lengths to run through the compiled model to count recompiles", minimum=1
        ),
        "max_recompiles": Param(int, 1, "recompilations of one frame allowed across those lengths", minimum=0),
        "gradients": Param(bool, True, "also compare the gradients of the loss through the compiled model"),
        "tolerance_scale": Param(
            float, 1.0, "multiplies the dtype's tolerance (assert_close's atol + rtol * max |eager|)", minimum=0
        ),
    },
)
