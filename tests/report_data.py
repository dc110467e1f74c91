"""Result records shaped like the ones llmcheck's measuring checks produce, for report and compare tests.

Real runs (the run_llmcheck fixture) cover the checks that run in seconds; these records stand in
for the slow, measuring ones (latency sweeps, leak curves, compression tables) so the report's
charts are exercised without minutes of timing. Their shapes follow llmcheck/checks/latency.py,
leak.py and compression.py.
"""

from __future__ import annotations

import random

from llmcheck.reports import json_report

ENV = {
    "python": "3.11.7",
    "torch": "2.13.0+cpu",
    "cuda": None,
    "device": "cpu",
    "cpu": "test CPU",
    "cpu_count": 2,
    "torch_threads": 2,
    "git_commit": "0123456789abcdef",
}


def record(check: str, status: str = "passed", model: str = "tiny", item: str | None = None, **fields) -> dict:
    item = item or check
    return {
        "id": f"model.py::{model}::{item}",
        "file": "/tmp/model.py",
        "model": model,
        "check": check,
        "family": fields.pop("family", check),
        "params": fields.pop("params", {}),
        "status": status,
        "message": fields.pop("message", f"{check} {status}"),
        "metrics": fields.pop("metrics", {}),
        "samples": fields.pop("samples", {}),
        "artifacts": {},
        "trace": "",
        "output": "",
        "duration_s": fields.pop("duration_s", 0.5),
        **fields,
    }


def latency(bs: int, median_ms: float, n: int = 60, seed: int = 0, status: str = "passed") -> dict:
    rng = random.Random(seed * 1000 + bs)
    samples = [median_ms * (1 + abs(rng.gauss(0, 0.03))) for _ in range(n)]
    return record(
        "latency",
        status,
        item=f"latency[bs={bs}-sl=16-float32-eager]",
        metrics={
            "config": {"bs": bs, "sl": 16, "precision": "float32", "mode": "eager"},
            "batch_size": bs,
            "seq_len": 16,
            "forward": {"median_ms": median_ms, "n": n, "tokens_per_s": bs * 16 / (median_ms / 1e3), "valid": True},
            "memory": {"peak_memory_mb": 40.0 + 3 * bs, "memory_kind": "cpu process RSS"},
        },
        samples={"forward_ms": samples},
    )


def leak(per_iter_bytes: float, n: int = 40, status: str = "passed") -> dict:
    rng = random.Random(7)
    rss = [200e6 + per_iter_bytes * i + rng.gauss(0, 2e4) for i in range(n)]
    return record(
        "leak",
        status,
        samples={"train_rss_bytes": rss, "train_live_tensors": [100 + i // 10 for i in range(n)]},
        metrics={"phases": {"train": {"slope_bytes_per_iter": per_iter_bytes}}, "iterations": n},
    )


def compression() -> dict:
    rows = [
        {
            "variant": "int8_dynamic",
            "kind": "int8_dynamic",
            "size_bytes": 300_000,
            "size_ratio": 0.3,
            "top1": 0.97,
            "kl": 0.01,
        },
        {"variant": "fp16", "kind": "fp16", "size_bytes": 500_000, "size_ratio": 0.5, "top1": 0.999, "kl": 0.0001},
        {
            "variant": "magnitude@0.5",
            "kind": "magnitude",
            "size_bytes": 1_000_000,
            "size_ratio": 1.0,
            "top1": 0.9,
            "kl": 0.05,
        },
        {"variant": "torchao_int4", "kind": "torchao_int4", "skipped": "torchao is not installed"},
    ]
    return record("compression", metrics={"table": rows, "inputs": "generated"})


def gradient() -> dict:
    norms = {f"blocks.{i}.{p}": 0.01 * (i + 1) ** 2 for i in range(4) for p in ("weight", "bias")}
    norms["head.weight"] = None
    return record(
        "gradient", metrics={"loss": 4.1, "grad_norms": norms, "overfit_losses": [4.1 * 0.9**i for i in range(20)]}
    )


def document(records: list[dict], env: dict | None = None, interrupted: bool = False) -> dict:
    return json_report.build(
        records,
        dict(ENV if env is None else env),
        {"name": "llmcheck", "version": "test"},
        1_700_000_000.0,
        1_700_000_042.0,
        interrupted,
    )


def showcase() -> dict:
    """A run with every chart kind, a failure, and hostile strings in user-controlled fields."""
    hostile = record(
        "eval",
        "failed",
        model="<script>alert(1)</script>",
        message="outputs differ </script><script>alert(2)</script> at position 3",
        trace='Traceback: "<img src=x onerror=alert(3)>"',
        output="</pre><b>bold?</b>",
    )
    return document(
        [
            latency(1, 1.0),
            latency(4, 2.5),
            latency(8, 4.0),
            leak(8192, status="failed"),
            compression(),
            gradient(),
            hostile,
        ]
    )
