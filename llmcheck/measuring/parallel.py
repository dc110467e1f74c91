"""Parallel inference: the same forward pass in several spawned processes at once (one GPU each,
round-robin, where several are present), for aggregate throughput and scaling efficiency.

Each process loads the model file itself (spawn, never fork after torch is imported), warms up,
waits at a barrier so that all run together, then runs forwards for a fixed time. Scaling
efficiency = aggregate tokens/s / (workers x tokens/s of one process alone with the same
threads and device). The processes stay in the worker's process group, so the watchdog's kill
reaches them.
"""

from __future__ import annotations

import multiprocessing
import queue as queue_module
import time
import traceback
from pathlib import Path
from typing import Any


def devices(base: str, workers: int) -> list[str]:
    """One device per process: GPUs round-robin when ``base`` is CUDA and several exist."""
    import torch

    kind = torch.device(base).type
    if kind == "cuda" and torch.cuda.device_count() > 1:
        return [f"cuda:{i % torch.cuda.device_count()}" for i in range(workers)]
    return [base] * workers


def _inference(t, job: dict[str, Any]):
    import torch

    from llmcheck.measuring import perf

    model = t.build().eval()
    batch = t.batch(job["batch_size"], job["seq_len"])

    def fn():
        with torch.no_grad(), perf.autocast(t.device, job["precision"]):
            t.forward(model, batch)

    return fn, job["batch_size"] * t.shape(job["batch_size"], job["seq_len"])[1]


def _run_for(fn, tokens: int, seconds: float, device) -> dict[str, float]:
    from llmcheck.measuring.memory import sync

    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        calls += 1
    sync(device)
    elapsed = time.perf_counter() - start
    return {"calls": calls, "seconds": elapsed, "tokens_per_s": calls * tokens / elapsed}


def solo(t, job: dict[str, Any]) -> dict[str, float]:
    """One process alone, in this process, with the workers' thread count."""
    from torch.utils.benchmark.utils.common import set_torch_threads

    with set_torch_threads(job["threads"]):
        fn, tokens = _inference(t, job)
        for _ in range(job["warmup_iters"]):
            fn()
        return _run_for(fn, tokens, job["seconds"], t.device)


def _worker(index: int, source: str, model_name: str, settings: dict, job: dict, barrier, results) -> None:
    try:
        import torch

        from llmcheck.target.model import Target, load_declarations

        torch.set_num_threads(job["threads"])
        models, hooks = load_declarations(Path(source))
        decl = next(m for m in models if m.name == model_name)
        t = Target(decl, hooks[decl.name], {**settings, "device": job["devices"][index]}, path=Path(source))
        fn, tokens = _inference(t, job)
        for _ in range(job["warmup_iters"]):
            fn()
        barrier.wait(timeout=job["start_timeout"])
        results.put({"index": index, "device": job["devices"][index], **_run_for(fn, tokens, job["seconds"], t.device)})
    except BaseException as exc:  # noqa: BLE001 - anything, even SystemExit from user code, goes to the parent
        barrier.abort()
        results.put({"index": index, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()})


def run(source: str, model_name: str, settings: dict, job: dict[str, Any], workers: int) -> list[dict[str, Any]]:
    """Start ``workers`` spawned processes running ``job``; their results, by index."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(workers), ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(i, source, model_name, settings, job, barrier, results), daemon=True)
        for i in range(workers)
    ]
    for proc in procs:
        proc.start()
    found: list[dict[str, Any]] = []
    try:
        while len(found) < workers:
            found.append(results.get(timeout=job["start_timeout"] + job["seconds"] + 30))
    except queue_module.Empty:
        raise RuntimeError(
            f"parallel inference: {workers - len(found)} of {workers} worker processes sent no "
            f"result within {job['start_timeout'] + job['seconds'] + 30:g} s"
        ) from None
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    failed = sorted(
        (r for r in found if "error" in r), key=lambda r: "BrokenBarrierError" in r["error"]
    )  # the cause first
    if failed:
        raise RuntimeError(
            f"parallel inference worker {failed[0]['index']} failed: {failed[0]['error']}\n{failed[0]['trace']}"
        )
    return sorted(found, key=lambda r: r["index"])
