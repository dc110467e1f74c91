"""coldstart: the time from a fresh process to the model's first output, split into interpreter
start, ``import torch``, importing the model file (and what it imports), model construction,
checkpoint load and first forward, against a warm forward. Catches a slow start (a heavy import,
construction that initialises weights it then overwrites, a first forward that compiles) before
it becomes a serving or CI cost.

The worker saves the model's weights (safetensors, else ``torch.save``), then starts
``python -m llmcheck.checks.coldstart`` once per repeat; that fresh process times each part and
writes the figures as JSON. "Cold" here means a new process with the OS file cache as it is: it
does not drop the page cache, which needs root.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from llmcheck.registry import Check, Param
from llmcheck.results import Skip, Verdict

OUTPUT_TAIL = 1500  # bytes of a failed fresh process's output kept in the error
PARTS = ("interpreter", "import_torch", "cuda_init", "import_model", "construct", "load", "first_forward")
LABELS = {
    "interpreter": "interpreter start",
    "import_torch": "import torch",
    "cuda_init": "CUDA init",
    "import_model": "import model file",
    "construct": "construct",
    "load": "load checkpoint",
    "first_forward": "first forward",
}


def _save(model, directory: Path) -> Path:
    """The weights as safetensors (tied weights handled), or torch.save where safetensors refuses."""
    import torch
    from safetensors.torch import save_model

    path = directory / "weights.safetensors"
    try:
        save_model(model, str(path))
    except (RuntimeError, ValueError):
        path = directory / "weights.pt"
        torch.save(model.state_dict(), path)
    return path


def _run_fresh(job: dict) -> dict:
    out_path = Path(job["out"])
    started = time.time()
    with subprocess.Popen(
        [sys.executable, "-m", "llmcheck.checks.coldstart", json.dumps(job)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=os.getcwd(),
    ) as proc:
        tail = _last_output(proc.stdout, OUTPUT_TAIL)  # the model may print without end: keep the tail only
        returncode = proc.wait()
    if returncode != 0 or not out_path.exists():
        raise RuntimeError(f"the fresh process exited with status {returncode}:\n{tail.strip()}")
    parts = json.loads(out_path.read_text())
    out_path.unlink()
    parts["interpreter"] = parts.pop("entered_at") - started
    return parts


def _last_output(stream, limit: int) -> str:
    """The last ``limit`` bytes of what ``stream`` gives until its end, read without keeping the rest."""
    kept = b""
    for chunk in iter(lambda: stream.read1(1 << 16), b""):
        kept = (kept + chunk)[-limit:]
    return kept.decode("utf-8", "replace")


def measure(ctx, p) -> dict:
    t = ctx.target
    weights = _save(t.build(), ctx.tmpdir)
    if t.path is None:
        raise Skip("the target was not loaded from a file, so a fresh process cannot load it again")
    job = {
        "file": str(t.path),
        "model": t.name,
        "settings": dict(t.settings),
        "weights": str(weights),
        "warm": p.warm_forwards,
        "out": str(ctx.tmpdir / "coldstart.json"),
    }
    runs = []
    for i in range(p.repeats):
        ctx.progress(fresh_process=i + 1, of=p.repeats)
        runs.append(_run_fresh(job))
    names = [k for k in PARTS if k in runs[0]]
    for name in [*names, "warm_forward"]:
        ctx.record_samples(f"{name}_s", [r[name] for r in runs])
    parts = {k: statistics.median(r[k] for r in runs) for k in names}
    return {
        "parts_s": parts,
        "first_output_s": sum(parts.values()),
        "repeats": p.repeats,
        "warm_forward_s": statistics.median(r["warm_forward"] for r in runs),
        "weights_format": weights.suffix.lstrip("."),
        "weights_bytes": weights.stat().st_size,
    }


def judge(m: dict, p) -> Verdict:
    parts, total = m["parts_s"], m["first_output_s"]
    slowest = max(parts, key=parts.get)
    split = ", ".join(f"{LABELS[k]} {v:.3f} s" for k, v in parts.items())
    warm = m["warm_forward_s"]
    ratio = f" ({parts['first_forward'] / warm:.0f}x the warm forward)" if warm > 0 else ""
    text = (
        f"first output {total:.2f} s after process start ({split}; median of {m['repeats']}); warm forward "
        f"{warm * 1e3:.2f} ms, first forward {parts['first_forward'] * 1e3:.2f} ms{ratio}; "
        f"slowest part: {LABELS[slowest]}"
    )
    if p.max_first_output_s > 0 and total > p.max_first_output_s:
        return Verdict("failed", f"cold start {total:.2f} s > max_first_output_s {p.max_first_output_s:g} s; {text}")
    return Verdict("passed", text)


CHECK = Check(
    name="coldstart",
    family="coldstart",
    timing=True,
    summary=(
        "time from a fresh process to the first output: import, construction, checkpoint load, first vs warm forward"
    ),
    measure=measure,
    judge=judge,
    params={
        "repeats": Param(int, 1, "fresh processes to start (the median of each part is reported)", minimum=1),
        "warm_forwards": Param(int, 5, "forwards after the first one; their median is the warm forward", minimum=1),
        "max_first_output_s": Param(
            float, 0.0, "fail when the time to the first output exceeds this (0: off)", minimum=0
        ),
    },
)


# -- the fresh process --------------------------------------------------------------------------
def _load(model, weights: str, device) -> None:
    if weights.endswith(".safetensors"):
        from safetensors.torch import load_model

        load_model(model, weights, strict=True, device=str(device))
    else:
        import torch

        model.load_state_dict(torch.load(weights, weights_only=True, map_location=device))


def _timed(parts: dict, name: str, fn):
    start = time.perf_counter()
    value = fn()
    parts[name] = time.perf_counter() - start
    return value


def fresh(job: dict) -> dict:
    """Time each part of a cold start in this (new) process."""
    parts = {"entered_at": time.time()}
    torch = _timed(parts, "import_torch", lambda: __import__("torch"))
    from llmcheck.target.model import Target, load_declarations

    models, hooks = _timed(parts, "import_model", lambda: load_declarations(Path(job["file"])))
    decl = next(m for m in models if m.name == job["model"])
    target = Target(decl, hooks[decl.name], job["settings"])
    if target.device.type == "cuda":
        _timed(parts, "cuda_init", lambda: (torch.cuda.init(), torch.empty(1, device=target.device)))
    from llmcheck.measuring.memory import sync as sync_device

    def sync():
        sync_device(target.device)

    model = _timed(parts, "construct", lambda: target.build().eval())
    _timed(parts, "load", lambda: _load(model, job["weights"], target.device))
    batch = target.batch()
    with torch.no_grad():
        _timed(parts, "first_forward", lambda: (target.forward(model, batch), sync()))
        warm = []
        for _ in range(job["warm"]):
            start = time.perf_counter()
            target.forward(model, batch)
            sync()
            warm.append(time.perf_counter() - start)
    parts["warm_forward"] = statistics.median(warm)
    return parts


if __name__ == "__main__":
    job = json.loads(sys.argv[1])
    Path(job["out"]).write_text(json.dumps(fresh(job)))
