"""throughput: tokens/s of inference and of a training step (autocast, and a GradScaler for float16
on CUDA), swept over batch sizes, per precision and execution mode (``throughput[bfloat16-eager]``):
the throughput-versus-latency curve and its knee, FLOPs per token (2N forward / 6N training plus
attention, and as counted by torch.utils.flop_counter), achieved FLOP/s and MFU against a table
of peak FLOP/s for known GPUs. Optionally, inference across several spawned processes (GPUs
round-robin) with aggregate throughput and scaling efficiency. Catches batch sizes that buy
latency without throughput and throughput below its budget; invalid measurements fail budgets.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from llmcheck.measuring import budget, perf, timing
from llmcheck.registry import Check, Param
from llmcheck.results import Skip, Verdict

BUDGETS = {
    "min_tokens_per_s": (
        'inference tokens/s must reach this at each batch size (select one with budgets: {"bs=16": ...})'
    ),
    "min_train_tokens_per_s": "training-step tokens/s must reach this at each batch size",
    "min_parallel_efficiency": (
        "scaling efficiency of parallel inference must reach this (0-1; needs parallel_workers > 1)"
    ),
}


def variants(p) -> list[dict[str, Any]]:
    return [{"precision": pr, "mode": mo} for mo in p.modes for pr in p.precisions]


def _series(m: timing.Measurement, tokens: int) -> dict[str, Any]:
    return {**m.to_metrics(), "tokens_per_s": tokens / (m.median_ms / 1e3) if m.median_ms > 0 else None}


def _train_maker(t, batch, precision: str, device, optimizer):
    import torch

    def make(model):
        scaler = torch.amp.GradScaler("cuda") if precision == "float16" else None

        def step():
            optimizer.zero_grad(set_to_none=True)
            with perf.autocast(device, precision):
                loss, _ = t.loss(model, batch)
            if scaler is None:
                loss.backward()
                optimizer.step()
            else:  # float16 gradients underflow without loss scaling
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()

        return step

    return make


def _series_plan(plan: timing.Plan, unit: float | None) -> timing.Plan:
    """``plan`` with ``max_time_s`` raised where a call is too slow to reach the floor of samples in it."""
    floor = max(plan.min_valid_samples, plan.min_samples)
    return plan if unit is None else replace(plan, max_time_s=max(plan.max_time_s, 1.25 * floor * unit))


def _series_cost(plan: timing.Plan, unit: float | None) -> float | None:
    return None if unit is None else plan.max_time_s + plan.warmup_iters * unit + plan.warmup_s


def sweep(ctx, t, p, plan: timing.Plan, sl: int, train: bool) -> tuple[list[int], budget.Plan, dict]:
    """The batch sizes that fit ``budget_s``, smallest first, each with its floor of samples per
    series (inference, and training when timed); at least the smallest, else the plan is inconclusive.
    Also (batch size -> its sampling plan)."""
    costs = budget.step_costs(t, train=train)
    sizes, per_size, points = sorted(set(p.batch_sizes)), {}, []
    for bs in sizes:
        units = [budget.forward_at(costs, bs * sl)]
        if train:
            units.append(budget.train_at(costs, bs * sl))
        per_size[bs] = _series_plan(plan, max((u for u in units if u is not None), default=None))
        series = [_series_cost(_series_plan(plan, u), u) for u in units]
        points.append(None if None in series else sum(series))
    flops = 2 * (budget.train_or_forward(costs) or 0.0) if p.count_flops else 0.0  # a counted forward and backward
    fixed = flops + (p.parallel_time_s * 2 + (costs.get("startup_s") or budget.STARTUP_GUESS_S)) * (
        p.parallel_workers > 1
    )
    found = budget.plan_prefix(
        ctx, "batch sizes of the sweep", points, 1, budget.allowed(p), fixed_s=fixed, check="throughput"
    )
    kept = sizes[: found.amount]
    if found.cut:
        found.sensitivity = f"batch sizes {', '.join(map(str, sizes[found.amount :]))} not measured"
    return [bs for bs in p.batch_sizes if bs in kept], found, per_size


def _point(ctx, t, models: dict, bs: int, sl: int, v: dict, p, plan: timing.Plan, validity: dict) -> dict[str, Any]:
    import torch

    batch, tokens = t.batch(bs, sl), bs * sl
    with torch.no_grad(), perf.autocast(t.device, v["precision"], cache=v["mode"] != "cuda_graphs"):
        fn, setup = perf.prepare(
            lambda m: lambda: t.forward(m, batch), models["eval"], v["mode"], t.device, p.compile_mode
        )
        infer = timing.sample(fn, plan, device=t.device)
    perf.keep(ctx, validity, f"inference_bs={bs}_ms", infer)
    point = {
        "batch_size": bs,
        "tokens": tokens,
        "inference": _series(infer, tokens),
        "setup_s": setup,
        "training": None,
    }
    if models["optimizer"] is not None and v["mode"] != "cuda_graphs":
        make = _train_maker(t, batch, v["precision"], t.device, models["optimizer"])
        step, point["train_setup_s"] = perf.prepare(make, models["train"], v["mode"], t.device, p.compile_mode)
        train = timing.sample(step, plan, device=t.device)
        perf.keep(ctx, validity, f"training_bs={bs}_ms", train)
        point["training"] = _series(train, tokens)
    return point


def knee(points: list[dict], kind: str, fraction: float) -> dict[str, Any] | None:
    """The smallest batch size reaching ``fraction`` of the best tokens/s: past it, larger batches
    buy latency, not throughput. ``at_largest`` when that is the largest batch measured (the
    curve is still rising: the knee lies beyond the sweep)."""
    curve = sorted(((pt["batch_size"], pt[kind]) for pt in points if pt.get(kind)), key=lambda x: x[0])
    if not curve:
        return None
    best_bs, best = max(curve, key=lambda x: x[1]["tokens_per_s"] or 0)
    for bs, s in curve:
        if (s["tokens_per_s"] or 0) >= fraction * best["tokens_per_s"]:
            return {
                "batch_size": bs,
                "tokens_per_s": s["tokens_per_s"],
                "latency_ms": s["median_ms"],
                "peak_batch_size": best_bs,
                "peak_tokens_per_s": best["tokens_per_s"],
                "at_largest": bs == curve[-1][0],
                "all_valid": all(x["valid"] for _, x in curve),
            }
    return None


def _flops(t, models: dict, sl: int, v: dict, p, points: list[dict]) -> dict[str, Any]:
    import torch

    from llmcheck.measuring import flops

    out = flops.analytic(models["eval"], sl)
    batch = t.batch(1, sl)
    out["forward_per_token_counted"] = out["train_per_token_counted"] = None
    if p.count_flops:
        with torch.no_grad():
            out["forward_per_token_counted"] = flops.counted(lambda: t.forward(models["eval"], batch), sl)
    if p.count_flops and models["optimizer"] is not None:
        out["train_per_token_counted"] = flops.counted(lambda: t.loss(models["train"], batch)[0].backward(), sl)
        models["train"].zero_grad(set_to_none=True)
    name = torch.cuda.get_device_name(t.device) if t.device.type == "cuda" else "cpu"
    peak, out["peak_source"] = flops.peak_flops(name, v["precision"], p.peak_tflops)
    out["device_name"], out["peak_flops_per_s"] = name, peak
    for kind, per_token in (
        ("inference", out["forward_per_token_counted"] or out["forward_per_token"]),
        ("training", out["train_per_token_counted"] or out["train_per_token"]),
    ):
        best = max((pt[kind]["tokens_per_s"] or 0 for pt in points if pt.get(kind)), default=None)
        out[kind] = flops.utilisation(per_token, best, peak)
    return out


def _parallel(ctx, t, v: dict, p, sl: int, plan: timing.Plan) -> dict[str, Any]:
    import torch

    from llmcheck.measuring import parallel

    workers = p.parallel_workers
    cpu = t.device.type == "cpu"
    threads = max(1, (plan.num_threads or torch.get_num_threads()) // workers) if cpu else 1
    job = {
        "batch_size": p.parallel_batch_size,
        "seq_len": sl,
        "precision": v["precision"],
        "seconds": p.parallel_time_s,
        "warmup_iters": 3,
        "threads": threads,
        "devices": parallel.devices(str(t.device), workers),
        "start_timeout": 120,
    }
    ctx.progress(parallel="one process alone")
    alone = parallel.solo(t, job)
    ctx.progress(parallel=f"{workers} processes")
    results = parallel.run(str(t.path), t.name, dict(t.settings), job, workers)
    total = sum(r["tokens_per_s"] for r in results)
    return {
        "workers": workers,
        "threads_per_worker": threads,
        "devices": job["devices"],
        "batch_size": p.parallel_batch_size,
        "seconds": p.parallel_time_s,
        "per_worker": results,
        "solo_tokens_per_s": alone["tokens_per_s"],
        "aggregate_tokens_per_s": total,
        "scaling_efficiency": total / (workers * alone["tokens_per_s"]),
    }


def measure(ctx, p) -> dict:
    import torch

    t = ctx.target
    v = perf.active_variant(ctx, p, variants)
    perf.budgets_for(p, v, BUDGETS)  # a bad budget table fails before minutes of measuring
    plan = timing.Plan.from_params(p)
    sl = t.shape(1, p.seq_len)[1]
    models = {"eval": t.build().eval(), "train": t.build().train()}
    train = p.train and any(q.requires_grad for q in models["train"].parameters())
    models["optimizer"] = t.optimizer(models["train"])[0] if train else None
    out: dict[str, Any] = {
        "config": dict(v),
        "seq_len": sl,
        "device": str(t.device),
        "threads": plan.num_threads or torch.get_num_threads(),
        "validity": {},
    }
    sizes, planned, per_size = sweep(ctx, t, p, plan, sl, models["optimizer"] is not None)
    if not planned.fits:
        raise Skip(planned.inconclusive())
    out["plan"], out["points"] = planned.to_json(), []
    for bs in dict.fromkeys(sizes):
        ctx.progress(batch_size=bs, **v)
        out["points"].append(_point(ctx, t, models, bs, sl, v, p, per_size[bs], out["validity"]))
    out["knee"] = {kind: knee(out["points"], kind, p.knee_fraction) for kind in ("inference", "training")}
    out["flops"] = _flops(t, models, sl, v, p, out["points"])
    out["parallel"] = _parallel(ctx, t, v, p, sl, plan) if p.parallel_workers > 1 else None
    return out


def _budget_problems(m: dict, p) -> list[str]:
    problems = []
    for pt in m["points"]:
        config = {"bs": pt["batch_size"], **m["config"]}
        where = perf.describe({"bs": pt["batch_size"], "sl": m["seq_len"], **m["config"]})
        budgets = perf.budgets_for(p, config, BUDGETS)
        for name, kind in (("min_tokens_per_s", "inference"), ("min_train_tokens_per_s", "training")):
            series = pt.get(kind)
            if name not in budgets:
                continue
            if series is None:
                problems.append(f"{name} = {budgets[name]:g} is set but {kind} was not measured ({where})")
            elif not series["valid"]:
                problems.append(
                    f"{kind} measurement is invalid ({'; '.join(series['invalid_reasons'])}): "
                    f"budget {name} = {budgets[name]:g} cannot pass on it ({where})"
                )
            elif series["tokens_per_s"] < budgets[name]:
                problems.append(
                    perf.over(f"{kind} throughput", series["tokens_per_s"], "<", budgets[name], "tokens/s", where)
                )
    limit = perf.budgets_for(p, m["config"], BUDGETS).get("min_parallel_efficiency")
    par = m["parallel"]
    if limit is not None and par is None:
        problems.append(
            f"min_parallel_efficiency = {limit:g} is set but parallel inference did not run: set parallel_workers > 1"
        )
    elif limit is not None and par["scaling_efficiency"] < limit:
        problems.append(
            f"parallel scaling efficiency {par['scaling_efficiency']:.0%} < {limit:.0%} "
            f"({par['workers']} processes: {par['aggregate_tokens_per_s']:.4g} tokens/s "
            f"vs {par['solo_tokens_per_s']:.4g} alone)"
        )
    return problems


def _curve(m: dict, kind: str) -> str:
    k = m["knee"][kind]
    if k is None:
        why = (
            "CUDA Graphs mode times inference only"
            if m["config"]["mode"] == "cuda_graphs"
            else "train = false or nothing trainable"
        )
        return f"{kind}: not measured ({why})"
    pts = ", ".join(
        f"bs {pt['batch_size']}: {pt[kind]['tokens_per_s']:.4g} tok/s @ p50 {pt[kind]['median_ms']:.3g} ms"
        + ("" if pt[kind]["valid"] else " [invalid]")
        for pt in m["points"]
        if pt.get(kind)
    )
    where = (
        "the largest batch measured: the curve is still rising"
        if k["at_largest"]
        else f"peak {k['peak_tokens_per_s']:.4g} at bs {k['peak_batch_size']}"
    )
    mfu = m["flops"][kind]["mfu"]
    return f"{kind} [{pts}], knee at bs {k['batch_size']} ({where}), MFU {f'{mfu:.2%}' if mfu is not None else 'n/a'}"


def judge(m: dict, p) -> Verdict:
    problems = _budget_problems(m, p)
    if problems:
        return Verdict("failed", "; ".join(problems))
    f = m["flops"]
    parts = [
        _curve(m, "inference"),
        _curve(m, "training"),
        f"FLOPs/token forward {f['forward_per_token']:.3g} analytic (2N)"
        + (f", {f['forward_per_token_counted']:.3g} counted" if f["forward_per_token_counted"] else "")
        + ("" if f["peak_flops_per_s"] else f"; {f['peak_source']}"),
    ]
    par = m["parallel"]
    if par:
        parts.append(
            f"parallel: {par['workers']} processes x {par['threads_per_worker']} threads, "
            f"{par['aggregate_tokens_per_s']:.4g} "
            f"tokens/s in all, efficiency {par['scaling_efficiency']:.0%} of {par['solo_tokens_per_s']:.4g} alone"
        )
    planned = m.get("plan") or {}
    if planned.get("cut"):
        parts.append(planned["sentence"])
    return Verdict("passed", f"{perf.describe(m['config'])}, seq {m['seq_len']}: " + "; ".join(parts))


CHECK = Check(
    name="throughput",
    family="performance",
    timing=True,
    summary="inference and training tokens/s over batch sizes: curve, knee, FLOPs/token, MFU, parallel scaling",
    measure=measure,
    judge=judge,
    variants=variants,
    params={
        "batch_sizes": Param(list, [1, 4, 16], "batch sizes of the sweep", minimum=1, item_type=int),
        "seq_len": Param(int, 16, "sequence length (capped at max_seq_len)", minimum=1),
        **perf.mode_params(
            "float32, bfloat16 autocast (CPU, CUDA), float16 autocast + GradScaler (CUDA)",
            "eager; compile and cuda_graphs (inference only) are opt-in, on CUDA",
        ),
        "train": Param(bool, True, "also time a training step (forward, backward, optimizer step)"),
        "knee_fraction": Param(
            float,
            0.9,
            "the knee is the smallest batch size reaching this fraction of the best tokens/s",
            minimum=0.01,
            maximum=1,
        ),
        "count_flops": Param(
            bool,
            True,
            "also count FLOPs with torch.utils.flop_counter (its first use imports "
            "torch._dynamo: about 2 s per worker on a CPU machine)",
        ),
        "peak_tflops": Param(
            float, None, "peak TFLOP/s for MFU when the device is not in the table (e.g. a CPU)", minimum=0
        ),
        "parallel_workers": Param(int, 1, "processes for parallel inference (1: off)", minimum=1),
        "parallel_batch_size": Param(int, 1, "batch size of each parallel process", minimum=1),
        "parallel_time_s": Param(float, 1.0, "seconds each parallel process runs forwards", minimum=0.05),
        **timing.params(max_time_s=0.15),
        **perf.budget_params(BUDGETS),
        "budget_s": budget.param(60.0, "sweep of one item (its batch sizes, FLOP counting, parallel run)"),
    },
)
