"""What the performance checks (latency, throughput, amp) share: precision and execution modes,
their CUDA paths, peak memory, and declarative budgets per configuration.

Budgets are scalars that apply to every configuration (``max_p50_ms = 20``) or a ``budgets`` table
whose keys select configurations by their item-id parts (``{"bs=8-bfloat16": {"max_p50_ms": 20}}``
matches every configuration with batch size 8 in bfloat16); later, more specific keys win.
Worker side only where a function imports torch; the budget helpers are pure.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from typing import Any

from llmcheck.measuring.memory import cuda_peak, sampled_rss_peak, sync
from llmcheck.registry import Param
from llmcheck.settings import SettingsError

PRECISIONS = ("float32", "bfloat16", "float16")
MODES = ("eager", "compile", "cuda_graphs")
DTYPE_EPS = {"bfloat16": 2.0**-8, "float16": 2.0**-11, "float32": 2.0**-24}  # unit roundoff


# -- precision and execution modes ---------------------------------------------------------------
def active_variant(ctx, p, variants: Callable) -> dict[str, Any]:
    """The configuration this item measures; Skip when the device cannot run it."""
    from llmcheck.results import Skip

    v = ctx.variant or variants(p)[0]
    reason = unsupported(ctx.target.device, v["precision"], v.get("mode", "eager"))
    if reason:
        raise Skip(reason)
    return v


def unsupported(device, precision: str, mode: str) -> str | None:
    """Why this configuration cannot run on ``device`` (a skip reason), or None."""
    import torch

    kind = torch.device(device).type
    if precision == "float16" and kind != "cuda":
        return f"float16 autocast is measured on CUDA only (device = {device}); on CPU use bfloat16"
    if precision == "bfloat16" and kind == "cuda" and not torch.cuda.is_bf16_supported():
        return (
            "bfloat16 autocast needs a GPU with bf16 support (Ampere or newer); "
            f"{torch.cuda.get_device_name(device)} has none"
        )
    if mode == "cuda_graphs" and kind != "cuda":
        return f"CUDA Graphs mode needs a CUDA device (device = {device}); set device=cuda"
    if mode == "compile" and kind != "cuda":
        return f"torch.compile mode is an opt-in for GPUs (device = {device}); set device=cuda"
    return None


def autocast(device, precision: str, cache: bool = True):
    """``torch.autocast`` for ``precision``, or nothing for float32. CUDA Graphs capture needs the
    autocast weight cache off (cast weights would be freed after capture)."""
    import torch

    if precision == "float32":
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=getattr(torch, precision), cache_enabled=cache)


def prepare(make_call: Callable[[Any], Callable[[], Any]], model, mode: str, device, compile_mode: str = "default"):
    """(fn, setup seconds) for a mode: eager calls the model; ``compile`` wraps it in torch.compile
    and times the first call (the compilation) apart; ``cuda_graphs`` captures one call into a
    CUDA graph, timed apart, and replays it (inputs stay fixed: the batch is static)."""
    import torch

    if mode == "eager":
        return make_call(model), {}
    if mode == "compile":
        fn = make_call(torch.compile(model, mode=compile_mode))
        start = time.perf_counter()
        fn()
        sync(device)
        return fn, {"compile_s": time.perf_counter() - start}
    fn = make_call(model)
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):  # warm-up on a side stream, as torch.cuda.graphs requires
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    start = time.perf_counter()
    with torch.cuda.graph(graph):
        fn()
    sync(device)
    return graph.replay, {"capture_s": time.perf_counter() - start}


def keep(ctx, validity: dict[str, bool], name: str, m) -> None:
    """Keep a series' raw samples in the result and note its validity (the benchmark bridge reads it)."""
    ctx.record_samples(name, m.samples_ms)
    validity[name] = m.valid


# -- machine speed ------------------------------------------------------------------------------
CALIBRATION = "a 256x256 float32 matmul, 40 ms of samples"


def calibrate(device, plan) -> float:
    """Median ms of a fixed workload that no model change can alter, timed in the same process,
    device and thread count as the model: the machine's speed at that moment. ``llmcheck compare``
    reads it to tell a machine that ran slower in one run (every process of it tight, so the
    between-process spread cannot show it) from a model that became slower."""
    import torch

    from llmcheck.measuring import timing

    a = torch.randn(256, 256, device=device, generator=torch.Generator(device=device).manual_seed(0))
    fixed = timing.Plan(
        warmup_iters=3,
        warmup_s=0.005,
        min_samples=10,
        max_samples=400,
        max_time_s=0.04,
        target_rel_ci=0.0,
        num_threads=plan.num_threads,
        disable_gc=plan.disable_gc,
    )
    return timing.sample(lambda: torch.mm(a, a), fixed, device=device).median_ms


# -- memory -------------------------------------------------------------------------------------
def peak_memory(fn: Callable[[], Any], device, min_time_s: float = 0.03) -> dict[str, Any]:
    """Peak memory while ``fn`` runs: CUDA ``max_memory_allocated`` after a reset, or on CPU the
    worker's resident set size sampled every 0.5 ms by a thread over at least ``min_time_s``."""
    import torch

    if torch.device(device).type == "cuda":
        peak, base = cuda_peak(fn, device)
        return {
            "peak_memory_mb": peak / 2**20,
            "baseline_memory_mb": base / 2**20,
            "memory_kind": "cuda max_memory_allocated",
        }
    peak, base = sampled_rss_peak(fn, interval_s=0.0005, min_time_s=min_time_s)
    return {"peak_memory_mb": peak / 2**20, "baseline_memory_mb": base / 2**20, "memory_kind": "cpu process RSS"}


def mode_params(precisions_doc: str, modes_doc: str) -> dict[str, Param]:
    """The precision and execution-mode parameters latency and throughput share (their docs differ)."""
    return {
        "precisions": Param(list, list(PRECISIONS), precisions_doc, item_type=str, choices=PRECISIONS),
        "modes": Param(list, ["eager"], modes_doc, item_type=str, choices=MODES),
        "compile_mode": Param(
            str, "default", "torch.compile mode", choices=("default", "reduce-overhead", "max-autotune")
        ),
    }


# -- budgets ------------------------------------------------------------------------------------
def budget_params(names: Mapping[str, str]) -> dict[str, Param]:
    """Scalar budget parameters (default: none) plus the per-configuration ``budgets`` table."""
    params = {name: Param(float, None, doc, minimum=0) for name, doc in names.items()}
    params["budgets"] = Param(
        dict, {}, 'per-configuration budgets: {selector: {budget: value}}, e.g. {"bs=8-bfloat16": {"max_p50_ms": 20}}'
    )
    return params


def matches(selector: str, config: Mapping[str, Any]) -> bool:
    """Whether every ``-``-separated part of ``selector`` (``bs=8``, ``bfloat16``) fits ``config``."""
    values = {str(v) for v in config.values()}
    for part in filter(None, selector.replace(" ", "").split("-")):
        key, eq, value = part.partition("=")
        if eq and str(config.get(key)) != value:
            return False
        if not eq and part not in values and part != "*":
            return False
    return True


def budgets_for(p, config: Mapping[str, Any], names) -> dict[str, float]:
    """The budgets that apply to ``config``: scalars first, then matching ``budgets`` entries in
    order of specificity. Raises SettingsError for an unknown budget name or a non-number."""
    table = p.get("budgets") or {}
    if not isinstance(table, Mapping):
        raise SettingsError(f"budgets = {table!r}: expected a table {{selector: {{budget: value}}}}")
    found = {n: float(p[n]) for n in names if p.get(n) is not None}
    ranked = sorted(table.items(), key=lambda kv: len(list(filter(None, str(kv[0]).split("-")))))
    for selector, entry in ranked:
        if not isinstance(entry, Mapping):
            raise SettingsError(f'budgets[{selector!r}] = {entry!r}: expected a table like {{"max_p50_ms": 20}}')
        for name, value in entry.items():
            if name not in names:
                raise SettingsError(f"budgets[{selector!r}] has unknown budget {name!r}; valid: {', '.join(names)}")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SettingsError(f"budgets[{selector!r}][{name!r}] = {value!r}: expected a number")
        if matches(str(selector), config):
            found.update({k: float(v) for k, v in entry.items()})
    return found


def describe(config: Mapping[str, Any]) -> str:
    """``batch 8, seq 16, bfloat16, eager`` for messages."""
    words = {"bs": "batch", "sl": "seq"}
    return ", ".join(f"{words[k]} {v}" if k in words else str(v) for k, v in config.items())


def over(label: str, observed: float, op: str, limit: float, unit: str, where: str) -> str:
    """A budget failure: ``p50 latency 23.1 ms > 20 ms (batch 8, seq 16, bfloat16, eager)``."""
    return f"{label} {observed:.4g} {unit} {op} {limit:g} {unit} ({where})"
