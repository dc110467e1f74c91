"""One rank of the distributed check: one DDP training step on this rank's shard of the batch.

Started by the ``distributed`` check (which sets ``LLMCHECK_DDP_INIT`` to a FileStore URL) or by
``torchrun`` (rendezvous through ``env://``: MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE,
LOCAL_RANK)::

    torchrun --standalone --nproc-per-node 2 -m llmcheck.ddp_rank examples/tiny_gpt.py

Each rank loads the model file, builds the model with the run's seed, wraps it in
``DistributedDataParallel`` (``find_unused_parameters=True``, so an unused parameter is reported
instead of raising at the next step), runs forward, loss, backward and one SGD step on rows
``[rank * b, (rank + 1) * b)`` of the batch, and writes to ``--out``: ``rankN.safetensors`` (its
all-reduced gradients and updated parameters) and ``rankN.json`` (the parameters that received a
gradient locally, the lines of the model's own source it executed in the step, and those a forward
on rank 0's rows executes, the same data on every rank). Rank 0 gathers every
rank's JSON through the process group. Under torchrun, rank 0 then compares with one process on
the whole batch and prints the verdict (exit status 1 when it fails).
"""

from __future__ import annotations

import argparse
import datetime
import faulthandler
import json
import os
import sys
import time
from pathlib import Path

from llmcheck.isolation.frames import is_user_file


def choose_backend(device: str, cuda_count: int, world_size: int) -> tuple[str | None, str]:
    """(backend, "") or (None, why not): gloo on CPU, NCCL with one GPU per rank on CUDA."""
    if not device.startswith("cuda"):
        return "gloo", ""
    if cuda_count < world_size:
        return None, (
            f"NCCL needs one CUDA device per rank: world_size {world_size}, {cuda_count} CUDA device(s) visible"
        )
    return "nccl", ""


def rank_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the variables torchrun (or the check) sets."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return rank, world, int(os.environ.get("LOCAL_RANK", rank))


class LineTrace:
    """The (file, line) pairs of user code executed while active (``sys.settrace``; library frames
    are not line-traced, so the cost is one call per Python function call)."""

    def __init__(self):
        self.lines: set[tuple[str, int]] = set()
        self._user: dict[str, bool] = {}

    def _call(self, frame, event, arg):
        path = frame.f_code.co_filename
        user = self._user.get(path)
        if user is None:
            user = self._user[path] = is_user_file(path)
        return self._line if user else None

    def _line(self, frame, event, arg):
        if event == "line":
            self.lines.add((frame.f_code.co_filename, frame.f_lineno))
        return self._line

    def __enter__(self):
        sys.settrace(self._call)
        return self

    def __exit__(self, *exc):
        sys.settrace(None)


def shard(batch, rank: int, rows: int):
    """Rows ``[rank * rows, (rank + 1) * rows)`` of every tensor of a batch (mapping or tensor)."""
    part = slice(rank * rows, (rank + 1) * rows)
    return {k: v[part] for k, v in batch.items()} if isinstance(batch, dict) else batch[part]


def sgd_step(target, model, batch, lr: float, phase=lambda name: None) -> float:
    """Forward, the target's loss, backward and one plain SGD step (no momentum: the update is
    ``-lr * grad``, so updated parameters follow the gradients exactly)."""
    import torch

    opt = torch.optim.SGD([q for q in model.parameters() if q.requires_grad], lr=lr)
    opt.zero_grad(set_to_none=True)
    phase("forward")
    loss, _ = target.loss(model, batch)
    phase("backward")  # under DDP, gradients are all-reduced bucket by bucket during backward
    loss.backward()
    phase("optimizer")
    opt.step()
    return float(loss.detach())


def same_rows_trace(target, model, world: int, rows: int) -> LineTrace:
    """The lines of the model's code a forward runs on rank 0's rows, on every rank alike: the data
    are then the same everywhere, so a line that runs on some ranks only depends on the rank (lines
    that differ in the step, on each rank's own rows, may just depend on the data)."""
    import torch

    same = shard(target.batch(batch_size=world * rows), 0, rows)
    probe = LineTrace()
    with torch.no_grad(), probe:
        target.forward(model, same)
    return probe


def tensors_of(model) -> dict:
    """``grad.NAME`` and ``param.NAME`` of every trainable parameter, on the CPU."""
    out = {}
    for name, q in model.named_parameters():
        if q.requires_grad:
            out[f"param.{name}"] = q.detach().cpu().contiguous().clone()
            if q.grad is not None:
                out[f"grad.{name}"] = q.grad.detach().cpu().contiguous().clone()
    return out


def load_target(file: str, model_name: str | None, settings: dict):
    """The model's Target, loaded as the worker loads it (``llmcheck.isolation.child.ChildLoop._run``)."""
    from llmcheck.target.model import Target, load_declarations

    models, hooks = load_declarations(Path(file))
    decl = next((m for m in models if m.name == model_name), None) if model_name else models[0]
    if decl is None:
        raise SystemExit(f"{file} declares no model {model_name!r}; declared: {', '.join(m.name for m in models)}")
    return Target(decl, hooks[decl.name], settings, path=Path(file))


def _phase(args, name: str) -> None:
    """Append the phase to rankN.phase: the check reads it to time the step and name the phase."""
    with open(Path(args.out) / f"rank{os.environ['RANK']}.phase", "a") as f:
        f.write(f"{name} {time.time():.3f}\n")


def _init(args, backend: str, local_rank: int) -> None:
    import torch
    import torch.distributed as dist

    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    rank, world, _ = rank_env()
    dist.init_process_group(
        backend,
        init_method=os.environ.get("LLMCHECK_DDP_INIT", "env://"),
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=args.pg_timeout or args.timeout + 30),
    )


def _used_hooks(model) -> set[str]:
    """Names of parameters that receive a gradient in this rank's own backward (filled as it runs)."""
    used: set[str] = set()
    for name, q in model.named_parameters():
        if q.requires_grad:
            q.register_post_accumulate_grad_hook(lambda _q, name=name: used.add(name))
    return used


def _setup(args):
    """(target, this rank's shard, backend): the model file loaded, then the process group joined."""
    import torch

    rank, world, local_rank = rank_env()
    settings = json.loads(args.settings)
    backend, why = choose_backend(settings.get("device", "cpu"), torch.cuda.device_count(), world)
    if backend is None:
        raise SystemExit(why)
    if backend == "nccl":
        settings["device"] = f"cuda:{local_rank}"
    import torch._dynamo  # DDP's constructor imports it: seconds, kept out of the timed step

    target = load_target(args.file, args.model, settings)  # before joining: imports can take long
    batch = shard(target.batch(batch_size=world * args.per_rank_batch), rank, args.per_rank_batch)
    _init(args, backend, local_rank)
    _phase(args, "joined")
    return target, batch, backend


def run_rank(args) -> dict:
    """This rank's DDP step; writes rankN.safetensors and rankN.json; returns what rank 0 gathered."""
    import torch.distributed as dist
    from safetensors.torch import save_file
    from torch.nn.parallel import DistributedDataParallel as DDP

    target, batch, backend = _setup(args)
    rank, world, local_rank = rank_env()
    if not args.fault:  # under torchrun nobody watches from outside: dump every thread's stack, exit
        faulthandler.dump_traceback_later(args.timeout, exit=True)
    _phase(args, "build")
    trace = LineTrace()
    with trace:
        model = target.build().train(args.train_mode)
    used = _used_hooks(model)
    ddp = DDP(model, device_ids=[local_rank] if backend == "nccl" else None, find_unused_parameters=True)
    with trace:  # DDP's constructor is torch's code, not the model's: left out of the trace
        loss = sgd_step(target, ddp, batch, args.lr, lambda name: _phase(args, name))
    _phase(args, "write")
    save_file(tensors_of(model), str(Path(args.out) / f"rank{rank}.safetensors"))
    probe = same_rows_trace(target, model, world, args.per_rank_batch)
    info = {
        "rank": rank,
        "world_size": world,
        "backend": backend,
        "loss": loss,
        "used": sorted(used),
        "lines": sorted([f, n] for f, n in trace.lines),
        "probe_lines": sorted([f, n] for f, n in probe.lines),
        "host": os.uname().nodename,
    }
    (Path(args.out) / f"rank{rank}.json").write_text(json.dumps(info))
    _phase(args, "gather")
    gathered = [None] * world
    dist.all_gather_object(gathered, info)
    if rank == 0:
        (Path(args.out) / "gathered.json").write_text(json.dumps(gathered))
    _phase(args, "done")
    if args.fault:  # started by the check: everything is written; skip teardown (see _end)
        _end()
    faulthandler.cancel_dump_traceback_later()
    del ddp  # the reducer goes before its process group: the other order can block in its destructor
    dist.destroy_process_group()
    return {"ranks": gathered, "device": str(target.device)}


def _end() -> None:
    """Exit now. Tearing down DDP and gloo after the process group is destroyed can block in the
    reducer's destructor (seen with torch 2.13), and interpreter shutdown with torch loaded takes
    a second or two; the check only needs the files, which are written and closed."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m llmcheck.ddp_rank", description=__doc__.split("\n\n")[0])
    ap.add_argument("file", help="the model file (or Hugging Face model folder)")
    ap.add_argument("--model", default=None, help="the declared model's name (default: the first)")
    ap.add_argument("--out", default="llmcheck-ddp", help="folder for each rank's tensors and JSON")
    ap.add_argument("--settings", default="{}", help='run settings as JSON, e.g. \'{"device": "cuda", "seed": 0}\'')
    ap.add_argument("--per-rank-batch", type=int, default=2, help="rows of the batch per rank")
    ap.add_argument("--lr", type=float, default=0.1, help="SGD learning rate of the step")
    ap.add_argument("--train-mode", action="store_true", help="step in train mode (dropout on) instead of eval")
    ap.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds the step may take once every rank joined; then every rank's stack is dumped",
    )
    ap.add_argument(
        "--pg-timeout", type=float, default=0.0, help="process-group timeout, a backstop (default: --timeout + 30)"
    )
    ap.add_argument("--rtol", type=float, default=0.0, help="relative tolerance (0: by dtype)")
    ap.add_argument("--atol", type=float, default=0.0, help="absolute tolerance (0: by dtype)")
    ap.add_argument("--fault", default=None, help="file for faulthandler's stacks on SIGUSR1 (set by the check)")
    return ap.parse_args(argv)
