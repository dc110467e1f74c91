"""latency: for each configuration (batch size x sequence length x precision x execution mode, one
item each, ``latency[bs=8-sl=16-bfloat16-eager]``), the median, IQR, CV and CI of the median of
one forward pass, p90 and p99 where the sample count supports them, tokens/s and peak memory; for
causal models that take a cache (``past_key_values``), prefill latency, time to first token,
per-token decode latency and decode tokens/s. Catches configurations over their budget, measured
with statistics (llmcheck.measuring.timing): a measurement that is too noisy or has too few samples is
invalid and fails every budget it is judged against.

With ``processes`` > 1 (default 3) the harness repeats the measurement in fresh worker processes
(llmcheck.isolation.processes) and `merge` pools them: budgets judge the pooled numbers, whose CI of the
median is widened by the between-process spread (llmcheck.stats.spread), and compare reads the spread.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from llmcheck.isolation import processes
from llmcheck.measuring import budget, perf, timing
from llmcheck.registry import Check, Param
from llmcheck.results import Skip, Verdict
from llmcheck.stats import spread

BUDGETS = {
    "max_p50_ms": "median forward latency must not exceed this (ms)",
    "max_p99_ms": "p99 forward latency must not exceed this (ms); sampling then takes >= 459 samples",
    "min_tokens_per_s": "forward tokens/s (batch x seq_len / median) must reach this",
    "max_peak_memory_mb": "peak memory during a forward must not exceed this (MB; CUDA allocated or CPU RSS)",
    "max_ttft_ms": "median time to first token must not exceed this (ms; models with a cache)",
    "min_decode_tokens_per_s": (
        "decode tokens/s (batch / median per-token latency) must reach this (models with a cache)"
    ),
}
# budget, series, statistic, label, unit
RULES = [
    ("max_p50_ms", "forward", "median_ms", "p50 latency", "ms"),
    ("max_p99_ms", "forward", "p99_ms", "p99 latency", "ms"),
    ("min_tokens_per_s", "forward", "tokens_per_s", "forward throughput", "tokens/s"),
    ("max_ttft_ms", "ttft", "median_ms", "time to first token", "ms"),
    ("min_decode_tokens_per_s", "decode", "tokens_per_s", "decode throughput", "tokens/s"),
]


def variants(p) -> list[dict[str, Any]]:
    return [
        {"bs": b, "sl": s, "precision": pr, "mode": mo}
        for mo in p.modes
        for pr in p.precisions
        for b in p.batch_sizes
        for s in p.seq_lens
    ]


def _plan(p, budgets: dict[str, float]) -> timing.Plan:
    plan = timing.Plan.from_params(p)
    if "max_p99_ms" in budgets:  # a p99 budget needs the samples that make p99 reportable
        need = timing.min_samples_for(0.99)
        plan = replace(plan, min_samples=max(plan.min_samples, need), max_samples=max(plan.max_samples, need))
    return plan


def fit(ctx, p, plan: timing.Plan, tokens: int, series: int) -> tuple[timing.Plan, budget.Plan]:
    """The sampling plan within ``budget_s``: each of ``series`` timed series keeps at least its
    floor of samples (min_valid_samples; 459 under a p99 budget), so ``max_time_s`` is raised for a
    model whose forward is too slow to reach it, and ``max_samples`` lowered to what the budget affords."""
    costs = budget.step_costs(ctx.target, train=False)
    unit = budget.forward_at(costs, tokens)  # decode steps cost less: an upper bound
    floor = max(plan.min_valid_samples, plan.min_samples)
    warm = series * (plan.warmup_iters * (unit or 0.0) + plan.warmup_s) + 2 * (unit or 0.0)  # + peak memory
    found = budget.plan(
        ctx,
        "timed samples per series",
        None if unit is None else series * unit,
        floor,
        plan.max_samples,
        budget.allowed(p),
        fixed_s=warm,
        check="latency",
    )
    if unit is None or not found.fits:
        return plan, found
    per_series = (found.budget_s - warm) / series
    seconds = min(per_series, max(plan.max_time_s, 1.25 * floor * unit))
    if seconds > plan.max_time_s:
        found.sensitivity = f"max_time_s {plan.max_time_s:g} s raised to {seconds:.3g} s to reach {floor} samples"
    return replace(plan, max_time_s=seconds, max_samples=found.amount), found


def _replay(plan: timing.Plan, p) -> dict[str, Any]:
    """Parameters that make another process sample as this one planned to, whatever its own first
    measurements of the step cost say (a fresh process's are slower): its budget is the timeout's."""
    return {"max_time_s": plan.max_time_s, "max_samples": plan.max_samples, "budget_s": float(p.timeout)}


def _series(m: timing.Measurement, tokens: int) -> dict[str, Any]:
    out = m.to_metrics()
    out["tokens"] = tokens
    return _throughput(out)


def _throughput(series: dict[str, Any]) -> dict[str, Any]:
    med = series["median_ms"]
    series["tokens_per_s"] = series["tokens"] / (med / 1e3) if med > 0 else None
    return series


def measure(ctx, p) -> dict:
    import torch

    t = ctx.target
    v = perf.active_variant(ctx, p, variants)
    budgets = perf.budgets_for(p, v, BUDGETS)
    plan = _plan(p, budgets)
    bs, sl = t.shape(v["bs"], v["sl"])
    decodes = t.traits.causal and v["mode"] == "eager" and t.cache_keyword() is not None
    plan, planned = fit(ctx, p, plan, bs * sl, 4 if decodes else 1)
    if not planned.fits:
        raise Skip(planned.inconclusive())
    model = t.build().eval()
    batch = t.batch(bs, sl)
    out = {
        "config": dict(v),
        "batch_size": bs,
        "seq_len": sl,
        "device": str(t.device),
        "threads": plan.num_threads or torch.get_num_threads(),
        "budgets": budgets,
        "validity": {},
        # the other measuring processes repeat this sampling plan (llmcheck.isolation.processes)
        "plan": {**planned.to_json(), "replay": _replay(plan, p)},
    }
    with torch.no_grad(), perf.autocast(t.device, v["precision"], cache=v["mode"] != "cuda_graphs"):
        fn, out["setup_s"] = perf.prepare(
            lambda m: lambda: t.forward(m, batch), model, v["mode"], t.device, p.compile_mode
        )
        ctx.progress(series="forward", **v)
        fwd = timing.sample(fn, plan, device=t.device)
        out["memory"] = perf.peak_memory(fn, t.device)
        out["calibration_ms"] = perf.calibrate(t.device, plan)
        perf.keep(ctx, out["validity"], "forward_ms", fwd)
        out["forward"] = _series(fwd, bs * sl)
        out["generation"], out["generation_note"] = _generation(ctx, t, model, batch, v, p, plan, out["validity"])
    return out


def _generation(ctx, t, model, batch, v, p, plan, validity):
    """Prefill, time to first token and per-token decode with the model's cache, or (None, why)."""
    from llmcheck.target.decoding import CacheDecoder

    if not t.traits.causal:
        return None, "not a causal model"
    decoder = CacheDecoder.of(t, model)
    if decoder is None:
        return None, "forward takes no past_key_values (or cache) keyword: prefill and decode not measured"
    if v["mode"] != "eager":
        return None, f"prefill and decode are measured in eager mode only (this item: {v['mode']})"
    prompt = decoder.prompt(batch, p.decode_tokens)
    if prompt is None:
        return None, f"max_seq_len {t.traits.max_seq_len} leaves no room for a prompt and {p.decode_tokens} new tokens"
    bs, length = decoder.shape(prompt)
    ctx.progress(series="prefill", **v)
    prefill = timing.sample(lambda: decoder.prefill(prompt), plan, device=t.device)
    ctx.progress(series="ttft", **v)
    ttft = timing.sample(lambda: decoder.first_token(prompt), plan, device=t.device)
    ctx.progress(series="decode", **v)
    setup, step = decoder.stepper(prompt, p.decode_tokens)
    decode = timing.sample(step, plan, setup=setup, device=t.device)
    for name, m in (("prefill_ms", prefill), ("ttft_ms", ttft), ("decode_token_ms", decode)):
        perf.keep(ctx, validity, name, m)
    gen = {
        "prompt_len": length,
        "new_tokens": p.decode_tokens,
        "cache_keyword": decoder.keyword,
        "prefill": _series(prefill, bs * length),
        "ttft": _series(ttft, bs),
        "decode": _series(decode, bs),
    }
    return gen, ""


SERIES = {"forward_ms": "forward", "prefill_ms": "prefill", "ttft_ms": "ttft", "decode_token_ms": "decode"}


def merge(parts: list[dict[str, Any]], p) -> dict:
    """One process's metrics shape from several processes' (pure): each timed series from the pooled
    samples (spread.merge_timing), peak memory the highest, the rest as the first process saw it."""
    first = parts[0]["metrics"]
    out = {**first, "validity": {}}

    def series(name: str, get) -> dict[str, Any]:
        out["validity"][name] = all(pt["metrics"]["validity"].get(name, False) for pt in parts)
        merged = spread.merge_timing(
            [get(pt["metrics"]) for pt in parts], [pt["samples"].get(name, []) for pt in parts]
        )
        return _throughput(merged)

    out["forward"] = series("forward_ms", lambda m: m["forward"])
    if first["generation"] and all(pt["metrics"]["generation"] for pt in parts):
        out["generation"] = {
            **first["generation"],
            **{
                key: series(name, lambda m, key=key: m["generation"][key])
                for name, key in SERIES.items()
                if key != "forward"
            },
        }
    speeds = [pt["metrics"]["calibration_ms"] for pt in parts if pt["metrics"].get("calibration_ms")]
    if speeds:  # the machine's speed over the item: the median process, and each one
        out["calibration_ms"], out["calibration_process_ms"] = sorted(speeds)[len(speeds) // 2], speeds
    peaks = [pt["metrics"]["memory"]["peak_memory_mb"] for pt in parts]
    out["memory"] = {**first["memory"], "peak_memory_mb": max(peaks), "per_process_peak_mb": peaks}
    return out


def _budget_problems(m: dict, where: str) -> list[str]:
    problems, b = [], m["budgets"]
    for name, key, stat, label, unit in RULES:
        if name not in b:
            continue
        series = m["forward"] if key == "forward" else (m["generation"] or {}).get(key)
        if series is None:
            problems.append(f"{name} = {b[name]:g} is set but {label} was not measured: {m['generation_note']}")
        elif not series["valid"]:
            problems.append(
                f"{label} measurement is invalid ({'; '.join(series['invalid_reasons'])}): "
                f"budget {name} = {b[name]:g} cannot pass on it ({where})"
            )
        elif series[stat] is None:
            problems.append(
                f"{label} cannot be judged: {series['p99_note']} (raise max_samples and max_time_s) ({where})"
            )
        elif (series[stat] > b[name]) if name.startswith("max_") else (series[stat] < b[name]):
            problems.append(
                perf.over(label, series[stat], ">" if name.startswith("max_") else "<", b[name], unit, where)
            )
    mem = m["memory"]["peak_memory_mb"]
    if "max_peak_memory_mb" in b and mem > b["max_peak_memory_mb"]:
        problems.append(
            perf.over(f"peak memory ({m['memory']['memory_kind']})", mem, ">", b["max_peak_memory_mb"], "MB", where)
        )
    return problems


def _fmt(label: str, s: dict) -> str:
    ci = f"CI {s['ci_low_ms']:.3g}-{s['ci_high_ms']:.3g}, " if s["ci_low_ms"] is not None else ""
    tails = ", ".join(f"p{q} {s[f'p{q}_ms']:.3g} ms" for q in (90, 99) if s[f"p{q}_ms"] is not None)
    over, between = spread.describe(s)
    text = (
        f"{label} p50 {s['median_ms']:.3g} ms{' ' + over if over else ''} ({between + ', ' if between else ''}"
        f"{ci}n={s['n']}, IQR/median {s['iqr_ratio']:.0%}{', ' + tails if tails else ''})"
    )
    return text if s["valid"] else text + f" [invalid: {'; '.join(s['invalid_reasons'])}]"


def judge(m: dict, p) -> Verdict:
    where = perf.describe(
        {**m["config"], "bs": m["batch_size"], "sl": m["seq_len"]}
    )  # sl as run: capped at max_seq_len
    problems = _budget_problems(m, where)
    fw = m["forward"]
    if problems:
        over, between = spread.describe(fw)
        measured = f"; forward measured {over}{f' ({between})' if between else ''}" if over else ""
        return Verdict("failed", "; ".join(problems) + measured)
    parts = [
        _fmt("forward", fw) + f", {fw['tokens_per_s']:.4g} tokens/s",
        f"peak memory {m['memory']['peak_memory_mb']:.4g} MB ({m['memory']['memory_kind']})",
    ]
    gen = m["generation"]
    if gen:
        parts += [
            _fmt("TTFT", gen["ttft"]),
            _fmt("decode", gen["decode"]) + f", {gen['decode']['tokens_per_s']:.4g} tokens/s",
        ]
    else:
        parts.append(m["generation_note"])
    budgets = ", ".join(f"{k} {v:g}" for k, v in m["budgets"].items()) or "none set"
    planned = m.get("plan") or {}
    if planned.get("cut") or planned.get("sensitivity"):
        parts.append(planned["sentence"])
    return Verdict("passed", f"{where}, {m['threads']} threads: " + "; ".join(parts) + f"; budgets: {budgets}")


CHECK = Check(
    name="latency",
    family="performance",
    timing=True,
    summary="forward, prefill, time-to-first-token and decode latency per configuration, with statistics and budgets",
    measure=measure,
    judge=judge,
    variants=variants,
    merge=merge,
    params={
        "batch_sizes": Param(list, [1, 8], "batch sizes, one item each", minimum=1, item_type=int),
        "seq_lens": Param(
            list, [16], "sequence lengths, one item each (capped at max_seq_len)", minimum=1, item_type=int
        ),
        **perf.mode_params(
            "float32, bfloat16 autocast (CPU, CUDA), float16 autocast (CUDA)",
            "eager; compile (torch.compile) and cuda_graphs are opt-in, on CUDA",
        ),
        "decode_tokens": Param(int, 8, "new tokens per timed generation (models with a cache)", minimum=1),
        **timing.PARAMS,
        **processes.PARAMS,
        **perf.budget_params(BUDGETS),
        "budget_s": budget.param(30.0, "timed series of one item in one process"),
    },
)
