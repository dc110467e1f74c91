"""Timing of data loaders against model steps, for the input-pipeline check (worker side).

Wall-clock timing with ``time.perf_counter``; on CUDA every timed unit ends with a device
synchronise, so an asynchronous copy or kernel is not mistaken for a fast one.
"""

from __future__ import annotations

import queue
import threading
import time

import torch

from llmcheck.measuring.memory import sync
from llmcheck.target.batches import checked, hook_name, next_batch, source, to_device
from llmcheck.target.model import ContractError

_END = object()


def loader_rate(ctx, t, split: str, loader, p, keep: int = 4) -> dict:
    """Batches/s of ``loader`` alone; the first batch (worker start-up) is timed apart."""
    what = hook_name(t, split)
    iterator, times, kept, first = iter(loader), [], [], None
    started = time.perf_counter()
    for i in range(p.batches + 1):
        t0 = time.perf_counter()
        try:
            batch = to_device(checked(next_batch(iterator, what), what, i), t.device)
        except StopIteration:
            break
        sync(t.device)
        elapsed = time.perf_counter() - t0
        if first is None:
            first = elapsed
        else:
            times.append(elapsed)
        if len(kept) < keep:
            kept.append(batch)
        ctx.progress(split=split, batch=i)
        if time.perf_counter() - started > p.time_budget:
            break
    del iterator  # a DataLoader's workers shut down with their iterator
    if first is None:
        raise ContractError(f"{what} yielded no batch; it must yield at least one")
    total = sum(times)
    return {
        "rate": len(times) / total if total > 0 else 1 / max(first, 1e-9),
        "times": times,
        "first": first,
        "kept": kept,
    }


def _stepper(t, model, p, train: bool):
    if train:
        from llmcheck.target.steps import train_step

        model.train()
        opt, sched = t.optimizer(model, p.lr)
        return lambda batch: train_step(t, model, opt, sched, batch)
    model.eval()

    def infer(batch):
        with torch.no_grad():
            return t.forward(model, batch)

    return infer


def model_rate(ctx, t, kept: list, p, train: bool) -> float:
    """Training steps/s (or inference forwards/s) on batches already in memory, after 2 warm-up steps."""
    step = _stepper(t, t.build(), p, train)
    for i in range(2):
        step(kept[i % len(kept)])
    sync(t.device)
    total = 0.0
    for i in range(p.steps):
        t0 = time.perf_counter()
        step(kept[i % len(kept)])
        sync(t.device)
        total += time.perf_counter() - t0
        ctx.progress(model_step=i, train=train)
    return p.steps / max(total, 1e-9)


def suggest(ctx, t, split: str, loader, base: dict, p) -> dict:
    """Measure one faster setting: more DataLoader workers, or a background prefetch thread."""
    from torch.utils.data import DataLoader, IterableDataset

    if isinstance(loader, DataLoader) and not isinstance(loader.dataset, IterableDataset):
        return _more_workers(ctx, t, split, loader, base, p)
    return _thread_prefetch(ctx, t, split, p)


def _more_workers(ctx, t, split, loader, base: dict, p) -> dict:
    from torch.utils.data import DataLoader

    workers = p.workers or max(2, 2 * loader.num_workers)
    pin = t.device.type == "cuda" or loader.pin_memory
    if workers <= loader.num_workers and pin == loader.pin_memory:
        return {
            "setting": f"fewer costs per batch (num_workers={loader.num_workers} already)",
            "detail": "pre-tokenise or cache decoded data; more workers were not asked for",
            "speedup": None,
        }
    kwargs = dict(
        num_workers=workers,
        collate_fn=loader.collate_fn,
        pin_memory=pin,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        prefetch_factor=loader.prefetch_factor or 2,
    )
    if loader.batch_sampler is not None:
        variant = DataLoader(loader.dataset, batch_sampler=loader.batch_sampler, **kwargs)
    else:
        variant = DataLoader(loader.dataset, sampler=loader.sampler, batch_size=None, **kwargs)
    timing = loader_rate(ctx, t, split, variant, p, keep=0)
    setting = f"DataLoader(num_workers={workers}, pin_memory={pin}, prefetch_factor={kwargs['prefetch_factor']})"
    return {
        "setting": setting,
        "speedup": timing["rate"] / base["rate"],
        "batches_per_s": timing["rate"],
        "detail": f"{timing['rate']:.3g} batches/s against {base['rate']:.3g}",
    }


def _prefetched(iterator, size: int):
    """Yield ``iterator``'s items, produced ahead by a daemon thread into a bounded queue."""
    box: queue.Queue = queue.Queue(maxsize=size)

    def produce():
        try:
            for item in iterator:
                box.put(item)
        except BaseException as exc:  # handed to the consumer, which raises it as the user's
            box.put(exc)
        box.put(_END)

    threading.Thread(target=produce, daemon=True, name="llmcheck-prefetch").start()
    while (item := box.get()) is not _END:
        if isinstance(item, BaseException):
            raise item
        yield item


def _loop_time(ctx, t, split: str, p, step, threaded: bool) -> float:
    """Seconds per batch of a loop that loads a batch and runs one model step on it."""
    what = hook_name(t, split)
    iterator = iter(source(t, split))
    iterator = _prefetched(iterator, p.prefetch) if threaded else iterator
    started, n = time.perf_counter(), 0
    while n < p.batches and time.perf_counter() - started < p.time_budget:
        try:
            batch = checked(next_batch(iterator, what), what, n)
        except StopIteration:
            break
        step(to_device(batch, t.device))
        sync(t.device)
        n += 1
        ctx.progress(split=split, loop_batch=n, threaded=threaded)
    return (time.perf_counter() - started) / max(n, 1)


def _thread_prefetch(ctx, t, split: str, p) -> dict:
    step = _stepper(t, t.build(), p, split == "train")
    serial = _loop_time(ctx, t, split, p, step, threaded=False)
    threaded = _loop_time(ctx, t, split, p, step, threaded=True)
    return {
        "setting": f"a background thread prefetching {p.prefetch} batches (or a DataLoader with num_workers > 0)",
        "speedup": serial / threaded,
        "detail": (
            f"load + step {serial * 1e3:.1f} ms per batch in the loop's thread, {threaded * 1e3:.1f} ms prefetched"
        ),
    }
