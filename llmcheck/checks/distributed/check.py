"""distributed: DDP on ``world_size`` processes equals one process on the whole batch after one
step; no parameter goes unused on any rank; every rank runs the same lines of the model's code;
and a collective that one rank never reaches is caught within ``collective_timeout`` with every
rank's stack. Catches rank-dependent code paths (a forward that branches on
``torch.distributed.get_rank()``), parameters DDP would flag as unused (its default
``find_unused_parameters=False`` then raises at the next step), losses whose reduction does not
survive sharding, and collective hangs that would otherwise sit for the process group's 30-minute
(gloo) or 10-minute (NCCL) default timeout.

The worker starts the ranks (``llmcheck.checks.distributed.launch``; gloo on CPU, NCCL with one GPU per rank),
each running ``llmcheck.checks.distributed.rank`` on its shard, then runs the same SGD step itself on the
concatenated batch and compares gradients and updated parameters within a dtype-aware tolerance.
The step runs in eval mode by default: dropout draws differ between a shard and the whole batch.
"""

from __future__ import annotations

import json
import linecache
import os
from pathlib import Path

from llmcheck.measuring import budget
from llmcheck.registry import Check, Param
from llmcheck.results import Skip, Verdict

# (rtol, atol) by parameter dtype: |Δ| <= atol + rtol * max|reference| per parameter. All-reduce
# sums in a different order than one process: float32 differences measured here are ~1e-7 relative.
TOLERANCE = {"float64": (1e-10, 1e-12), "float32": (1e-5, 1e-7), "bfloat16": (2e-2, 1e-4), "float16": (2e-3, 1e-5)}
MAX_LINES = 20  # rank-dependent lines listed in a message


def tolerance(dtype: str, p) -> tuple[float, float]:
    rtol, atol = TOLERANCE.get(dtype, TOLERANCE["float32"])
    return (p.rtol or rtol, p.atol or atol)


def _rank_argv(t, p) -> list[str]:
    argv = [
        str(t.path),
        "--model",
        t.name,
        "--settings",
        json.dumps(dict(t.settings)),
        "--per-rank-batch",
        str(p.per_rank_batch),
        "--lr",
        repr(p.lr),
        "--timeout",
        repr(p.collective_timeout),
        # the process group's own timeout is the backstop; the watchdog here fires first with stacks
        "--pg-timeout",
        repr(p.collective_timeout + 30),
    ]
    return argv + (["--train-mode"] if p.train_mode else [])


def plan_ranks(ctx, p) -> budget.Plan:
    """The run's fixed cost against ``budget_s``: each rank starts a process (interpreter and torch,
    as this worker took), imports the model file, builds the model and takes a step; ranks share the
    cores; then one reference step on the whole batch here."""
    t = ctx.target
    costs = budget.step_costs(t)
    step = budget.train_at(costs, p.per_rank_batch * t.shape()[1])
    rounds = -(-p.world_size // max(1, os.cpu_count() or 1))  # ranks started one round per core
    parts = [costs.get("startup_s") or budget.STARTUP_GUESS_S, costs.get("import_s") or 0.0, costs.get("build_s"), step]
    rank = None if None in parts else sum(parts) * rounds / p.world_size
    reference = budget.train_at(costs, p.world_size * p.per_rank_batch * t.shape()[1])
    return budget.plan(
        ctx,
        "rank processes",
        rank,
        p.world_size,
        p.world_size,
        budget.allowed(p),
        fixed_s=reference or 0.0,
        check="distributed",
    )


def measure(ctx, p) -> dict:
    import torch

    from llmcheck.checks.distributed import launch as ddp_launch
    from llmcheck.checks.distributed.rank import choose_backend

    t = ctx.target
    if t.path is None:
        raise Skip("the target was not loaded from a file, so the rank processes cannot load it")
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    backend, why = choose_backend(str(t.device), cuda, p.world_size)
    if backend is None:
        raise Skip(why)
    if not any(q.requires_grad for q in t.build().parameters()):
        raise Skip("the model has no trainable parameters: there are no gradients to all-reduce")
    planned = plan_ranks(ctx, p)
    if not planned.fits:
        raise Skip(planned.inconclusive())
    from llmcheck.target.preconditions import require_deterministic, require_finite

    require_finite(t)  # ranks and the one-process step must compute the same finite forward
    require_deterministic(t, mode="train" if p.train_mode else "eval")
    out = ctx.tmpdir / "ddp"
    ranks = ddp_launch.start({"argv": _rank_argv(t, p), "cwd": os.getcwd()}, out, p.world_size)
    ctx.progress(phase="start-up", ranks=p.world_size, backend=backend)
    run = ddp_launch.watch(ranks, p.rank_startup_timeout, p.collective_timeout, ctx.progress)
    for r in ranks:
        ctx.artifact(f"rank{r.rank}.log", r.log)
    metrics = {
        "world_size": p.world_size,
        "backend": backend,
        "per_rank_batch": p.per_rank_batch,
        "collective_timeout_s": p.collective_timeout,
        "plan": planned.to_json(),
        # forked by the session's fork server (torch imported once, ahead) or new interpreters
        "ranks_started_by": "forkserver" if all(ddp_launch.forked(r) for r in ranks) else "interpreter",
        **run,
    }
    if run["outcome"] == "finished":
        ctx.progress(phase="reference step on the whole batch")
        metrics.update(compare(t, out, ddp_launch.gathered(out), p))
    return metrics


def reference(t, rows: int, p) -> dict:
    """Gradients and updated parameters of one process on the whole batch (same seed, same step)."""
    from llmcheck.checks.distributed.rank import sgd_step, tensors_of

    model = t.build().train(p.train_mode)
    batch = t.batch(batch_size=rows)
    loss = sgd_step(t, model, batch, p.lr)
    dtype = str(next(q for q in model.parameters() if q.requires_grad).dtype).removeprefix("torch.")
    return {
        "tensors": tensors_of(model),
        "loss": loss,
        "dtype": dtype,
        "trainable": [n for n, q in model.named_parameters() if q.requires_grad],
    }


def _diff(a, b) -> list[float]:
    """[max |a - b|, max |b|] in float64 ([0, 0] for an empty tensor)."""
    if not b.numel():
        return [0.0, 0.0]
    return [float((a.double() - b.double()).abs().max()), float(b.double().abs().max())]


def compare(t, out: Path, ranks: list[dict], p) -> dict:
    """Each rank's tensors (those written on this machine) against one process on the whole batch."""
    from safetensors.torch import load_file

    ref = reference(t, len(ranks) * p.per_rank_batch, p)
    grad, param, missing = {}, {}, {}
    local = [i for i in ranks if (out / f"rank{i['rank']}.safetensors").exists()]  # others: on another node
    for info in local:
        got = load_file(str(out / f"rank{info['rank']}.safetensors"))
        for name in ref["trainable"]:
            r, g = ref["tensors"].get(f"grad.{name}"), got.get(f"grad.{name}")
            if (r is None) != (g is None):
                missing.setdefault(name, []).append(info["rank"])
            elif r is not None:
                grad[name] = max(grad.get(name, [0.0, 0.0]), _diff(g, r))
            param[name] = max(param.get(name, [0.0, 0.0]), _diff(got[f"param.{name}"], ref["tensors"][f"param.{name}"]))
    unused = {n: [i["rank"] for i in ranks if n not in i["used"]] for n in ref["trainable"]}
    return {
        "dtype": ref["dtype"],
        "reference_loss": ref["loss"],
        "rank_loss": [i["loss"] for i in ranks],
        "parameters": len(ref["trainable"]),
        "compared_ranks": len(local),
        "grad": grad,
        "param": param,
        "grad_presence_differs": missing,
        "unused": {n: r for n, r in unused.items() if r},
        "lines": divergent_lines(ranks, t.path, "probe_lines"),
        "shard_lines": divergent_lines(ranks, t.path, "lines"),
    }


def divergent_lines(ranks: list[dict], model_path, key: str) -> dict:
    """Lines of user code executed on some ranks but not all, with their text: ``probe_lines`` (a
    forward on the same rows everywhere: a difference is the rank's doing) or ``lines`` (the step,
    on each rank's own rows: a difference may be the data's)."""
    per_rank = [{(f, n) for f, n in i[key]} for i in ranks]
    every, union = set.intersection(*per_rank), set.union(*per_rank)
    base = Path(model_path).resolve().parent if model_path else Path.cwd()
    lines = []
    for f, n in sorted(union - every):
        shown = os.path.relpath(f, base) if f.startswith(str(base)) else f
        lines.append(
            {
                "where": f"{shown}:{n}",
                "text": linecache.getline(f, n).strip(),
                "ranks": [i["rank"] for i, s in zip(ranks, per_rank) if (f, n) in s],
            }
        )
    return {"same_on_all": len(every), "divergent": lines}


def _ratio(entry: list[float], rtol: float, atol: float) -> float:
    """|Δ| over its tolerance, atol + rtol * max|reference|: above 1 fails."""
    return entry[0] / (atol + rtol * entry[1])


def _over(table: dict, rtol: float, atol: float) -> list[str]:
    """Parameters over the tolerance, worst first."""
    ratios = {n: _ratio(e, rtol, atol) for n, e in table.items()}
    return sorted((n for n, r in ratios.items() if r > 1), key=ratios.get, reverse=True)


def _mismatch(kind: str, table: dict, rtol: float, atol: float) -> str:
    over = _over(table, rtol, atol)
    if not over:
        return ""
    d, s = table[over[0]]
    more = (
        f" ({len(over)} of {len(table)} parameters differ, worst first: {', '.join(over[:5])})" if len(over) > 1 else ""
    )
    return (
        f"{kind} of {over[0]} differs from one process on the whole batch: max |Δ| = {d:.3g} > "
        f"{atol:g} + {rtol:g} × max |ref| {s:.3g} = {atol + rtol * s:.3g}{more}"
    )


def _unused(unused: dict) -> list[str]:
    """One sentence per set of ranks: which parameters got no gradient there."""
    by_ranks: dict[tuple, list[str]] = {}
    for name, ranks in unused.items():
        by_ranks.setdefault(tuple(ranks), []).append(name)
    return [
        f"parameter{'s' if len(names) > 1 else ''} {', '.join(names)} received no gradient on rank(s) "
        f"{', '.join(map(str, ranks))}: DDP would flag {'them' if len(names) > 1 else 'it'} as unused (its "
        f"default find_unused_parameters=False then raises at the next step)"
        for ranks, names in by_ranks.items()
    ]


def _problems(m: dict, rtol: float, atol: float) -> list[str]:
    problems = []
    lines = m["lines"]["divergent"]
    if lines:
        shown = "; ".join(
            f"{x['where']} `{x['text']}` ran on rank(s) {', '.join(map(str, x['ranks']))} only"
            for x in lines[:MAX_LINES]
        )
        problems.append(f"{len(lines)} line(s) of the model's code ran on some ranks but not all: {shown}")
    problems += _unused(m["unused"])
    problems += [
        f"parameter {n} has a gradient on one side only (rank(s) {r} vs one process)"
        for n, r in m["grad_presence_differs"].items()
        if n not in m["unused"]
    ]
    problems += [
        x
        for x in (_mismatch("gradient", m["grad"], rtol, atol), _mismatch("updated value", m["param"], rtol, atol))
        if x
    ]
    return problems


def _stuck_text(m: dict) -> str:
    return "; ".join(
        f"rank {s['rank']} "
        + (
            f"had exited ({s['exited']})"
            if s.get("exited")
            else f"stuck at {s['at'] or 'an unknown frame'} (phase {s['phase']})"
        )
        for s in m["stuck"]
    )


def _rank_failed(m: dict) -> Verdict:
    """One process would fail too when every rank raised the same error (status error); a failure
    on some ranks only, or different ones, is rank-dependent (failed)."""
    failed = sorted(m["failed"], key=lambda f: (not f["first"], f["rank"]))
    text = "; ".join(
        f"rank {f['rank']} {'failed first' if f['first'] else 'then failed'}: exited with {f['exit']} "
        f"in phase {f['phase']}: {f['error']}" + (f" (at {f['at']})" if f["at"] else "")
        for f in failed
    )
    stuck = f"; {_stuck_text(m)}" if m["stuck"] else ""
    same = len(failed) == m["world_size"] and len({f["error"] for f in failed}) == 1
    outputs = "\n".join(f"--- rank {f['rank']} output ---\n{f['output']}" for f in failed)
    return Verdict(
        "error" if same else "failed", f"{text}{stuck}; every rank was killed\n\n{outputs}\n{m['stacks']}".rstrip()
    )


def judge(m: dict, p) -> Verdict:
    where = f"{m['world_size']} {m['backend']} ranks"
    if m["outcome"] == "hang":
        return Verdict(
            "failed",
            f"collective hang: the DDP step on {where} did not finish within collective_timeout "
            f"{m['limit_s']:g} s after every rank joined; {_stuck_text(m)}; every rank was killed"
            f"\n\n{m['stacks']}",
        )
    if m["outcome"] == "startup":
        return Verdict(
            "error",
            f"the {where} did not all join the process group within rank_startup_timeout "
            f"{m['limit_s']:g} s; {_stuck_text(m)}\n\n{m['stacks']}",
        )
    if m["outcome"] == "rank_failed":
        return _rank_failed(m)
    rtol, atol = tolerance(m["dtype"], p)
    problems = _problems(m, rtol, atol)
    if problems:
        return Verdict("failed", f"DDP on {where}: " + "; ".join(problems))
    g = max(m["grad"], key=lambda n: _ratio(m["grad"][n], rtol, atol))
    q = max(m["param"], key=lambda n: _ratio(m["param"][n], rtol, atol))
    return Verdict(
        "passed",
        (
            f"DDP on {where} ({m['per_rank_batch']} rows each) equals one process on the "
            f"{m['world_size'] * m['per_rank_batch']}"
            f"-row batch after one SGD step: {m['parameters']} parameters ({m['dtype']}), max |Δ| gradient "
            f"{m['grad'][g][0]:.3g} ({g}), updated parameter {m['param'][q][0]:.3g} ({q}), "
            f"tolerance {atol:g} + {rtol:g} × "
            f"max |ref|; every parameter got a gradient on every rank; on the same rows every rank ran the same "
            f"{m['lines']['same_on_all']} line(s) of the model's code{_data_dependent(m)}"
        ),
    )


def _data_dependent(m: dict) -> str:
    """A note (not a failure) on lines that differed between ranks only on their own rows."""
    probe = {x["where"] for x in m["lines"]["divergent"]}
    only = [x for x in (m.get("shard_lines") or {}).get("divergent", []) if x["where"] not in probe]
    if not only:
        return ""
    shown = "; ".join(f"{x['where']} on rank(s) {', '.join(map(str, x['ranks']))}" for x in only[:MAX_LINES])
    return (
        f" ({len(only)} line(s) ran on some ranks only on each rank's own rows but on every rank on the same "
        f"rows, so they follow the data, not the rank: {shown})"
    )


CHECK = Check(
    name="distributed",
    family="distributed",
    summary="DDP on 2 processes equals one process on the whole batch; no unused parameters or rank-dependent "
    "lines; a collective hang is caught with every rank's stack",
    measure=measure,
    judge=judge,
    # the ranks are forked by the session's fork server, these already imported (launch.start)
    preload=(
        "torch._dynamo",  # DDP's constructor imports it: 1.8 s of each rank's start-up otherwise
        "torch.distributed",
        "torch.nn.parallel",
        "safetensors.torch",
        "llmcheck.checks.distributed.torchrun",
    ),
    params={
        "world_size": Param(int, 2, "ranks to start (NCCL: one GPU each)", minimum=2),
        "per_rank_batch": Param(int, 2, "rows of the batch each rank trains on", minimum=1),
        "lr": Param(float, 0.1, "SGD learning rate of the compared step", minimum=0),
        "train_mode": Param(
            bool, False, "step in train mode (dropout on: only for models without randomness in training)"
        ),
        "collective_timeout": Param(
            float, 30.0, "seconds the step may take once every rank joined; then it is a hang", minimum=0.1
        ),
        "rank_startup_timeout": Param(
            float, 90.0, "seconds the ranks may take to import torch and join the process group", minimum=1
        ),
        "rtol": Param(
            float, 0.0, "relative tolerance, times the parameter's largest reference value (0: by dtype)", minimum=0
        ),
        "atol": Param(float, 0.0, "absolute tolerance (0: by dtype)", minimum=0),
        "budget_s": budget.param(120.0, "ranks' start-up and steps (skipped, inconclusive, when they would not fit)"),
    },
    timeout=180.0,
)
