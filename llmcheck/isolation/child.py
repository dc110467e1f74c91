"""The worker process's side: import torch once, then run commands from the parent.

Started by `llmcheck.isolation.worker.WorkerProcess` (under its reaper) as
``python -m llmcheck.isolation CMD_FD OUT_FD FAULT_PATH [BEAT_PATH]``; the model's calls are counted
into BEAT_PATH (`llmcheck.target.calls.Heartbeat`), which the parent's watchdog reads.
"""

from __future__ import annotations

import faulthandler
import gc
import json
import os
import platform
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from llmcheck.isolation.frames import PACKAGE_DIR
from llmcheck.registry import KNOWN_NEEDS, load_checks
from llmcheck.results import Result, Skip, strict_json
from llmcheck.settings import Params


class Channel:
    def __init__(self, fd: int):
        self.fd = fd

    def send(self, message: dict[str, Any]) -> None:
        data = (json.dumps(strict_json(message), allow_nan=False) + "\n").encode()
        while data:
            data = data[os.write(self.fd, data) :]


def user_traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` without llmcheck's own frames (kept when every frame is ours)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(PACKAGE_DIR)]
    if not frames:
        return "".join(traceback.format_exception(exc))
    lines = ["Traceback (most recent call last):\n", *traceback.format_list(frames)]
    return "".join(lines + traceback.format_exception_only(type(exc), exc))


def environment() -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class ChildLoop:
    def __init__(self, channel: Channel, calls=None, startup: dict[str, float] | None = None):
        self.channel = channel
        self.calls = calls  # a Heartbeat the parent reads, or None
        self.checks = None
        self.default_threads: int | None = None  # torch's own thread count, read before a check changes it
        # This process's start-up (interpreter, import torch): in the phases of the first command's result.
        self.startup = dict(startup or {})
        self.startup_s = sum(self.startup.values()) if self.startup else None
        self.imports: dict[str, float] = {}  # model file -> seconds its first import took here
        self.costs: dict[str, dict[str, Any]] = {}  # (file, model) -> the Target.step_costs its checks share
        self.tmp = Path(tempfile.mkdtemp(prefix="llmcheck-worker-", dir=os.environ.get("LLMCHECK_TMP")))

    def describe(self, msg: dict[str, Any]) -> dict[str, Any]:
        from llmcheck.target.model import ContractError

        path = Path(msg["file"])
        self.startup = {}  # paid by the collection this command is part of, not by a check
        try:
            models, _ = self._load(path)
        except ContractError as exc:
            return {"op": "error", "message": str(exc), "trace": ""}
        except BaseException as exc:  # SyntaxError, ImportError, anything at import
            return {
                "op": "error",
                "message": f"importing {path.name} raised {type(exc).__name__}: {exc}",
                "trace": user_traceback(exc),
            }
        return {
            "op": "described",
            "models": [{"name": m.name, "line": m.line, "traits": m.traits, "checks": m.checks} for m in models],
        }

    def _load(self, path: Path):
        from llmcheck.target.model import load_declarations

        started = time.perf_counter()
        found = load_declarations(path)
        self.imports.setdefault(str(path), time.perf_counter() - started)  # the first call imports the file
        return found

    def run(self, msg: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        phases, self.startup = {k: round(v, 4) for k, v in self.startup.items()}, {}
        threads = self._threads(msg.get("threads"))
        result = self._run(msg, phases)
        result.duration_s = time.perf_counter() - started
        result.phases = phases
        # What the check left alive stays out of every later check's full collection: the first
        # optimizer step or compile imports torch._dynamo (~100-200k objects, 0.05-0.15 s per full
        # collection here, paid before each of a suite's 60 items). Collect once, freeze the rest.
        # The leak check's holder search unfreezes (llmcheck.checks.leak.evidence.holder_of).
        gc.collect()
        gc.freeze()
        sys.stdout.flush()
        sys.stderr.flush()
        return {"op": "result", "result": result.to_json(), "retire": _had_cuda_oom(), "torch_threads": threads}

    def _threads(self, asked: int | None) -> int:
        """Set torch's threads for one check: ``asked`` (an ordinary item's share of the cores under
        pytest-xdist, llmcheck.plugins.scheduling), else torch's own setting at the worker's start."""
        import torch

        if self.default_threads is None:
            self.default_threads = torch.get_num_threads()
        torch.set_num_threads(asked or self.default_threads)
        return torch.get_num_threads()

    def _run(self, msg: dict[str, Any], phases: dict[str, float]) -> Result:
        import torch

        from llmcheck.context import Context
        from llmcheck.target.model import ContractError, Target, UserCodeError

        began = time.perf_counter()
        if self.checks is None:
            self.checks = load_checks()
        check = self.checks[msg["check"]]
        params = Params(msg["params"])
        torch.set_grad_enabled(True)
        gc.collect()
        ctx = None
        try:
            first = msg["file"] not in self.imports
            models, hooks = self._load(Path(msg["file"]))
            if first:
                phases["import_s"] = round(self.imports[msg["file"]], 4)
            decl = next(m for m in models if m.name == msg["model"])
            target = Target(decl, hooks[decl.name], msg["settings"], path=Path(msg["file"]))
            if self.calls is not None:
                target.calls = self.calls
            target.step_costs = self._costs(msg["file"], decl.name)
            unmet = self._unmet(check.needs, target)
            if unmet:
                return Result("skipped", unmet)
            workdir = Path(tempfile.mkdtemp(prefix=f"{check.name}-", dir=self.tmp))
            ctx = Context(target, workdir, self._progress)
            ctx.variant = dict(msg.get("variant") or {})
            planned = _plan_seconds(target)
            started = time.perf_counter()
            # gc, loading the checks, the target (its builds are the build phase's)
            setup_builds = target.build_s
            phases["setup_s"] = round(started - began - phases.get("import_s", 0.0) - setup_builds, 4)
            try:
                metrics = check.measure(ctx, params)
            finally:
                _measure_phases(phases, target, planned, time.perf_counter() - started, setup_builds)
            started = time.perf_counter()
            verdict = check.judge(metrics, params)
            phases["judge_s"] = round(time.perf_counter() - started, 4)
            return Result.of(verdict, metrics, ctx.samples, ctx.artifacts)
        except Skip as exc:
            return Result("skipped", str(exc))
        except ContractError as exc:
            return Result("error", str(exc))
        except UserCodeError as exc:
            return Result("error", str(exc), trace=user_traceback(exc.__cause__ or exc))
        except Exception as exc:
            return Result(
                "error",
                f"check {check.name} raised {type(exc).__name__}: {exc}",
                trace="".join(traceback.format_exception(exc)),
            )

    def _costs(self, file: str, model: str) -> dict[str, Any]:
        """The step-cost cache every check of this model shares, seeded with this process's start-up."""
        key = json.dumps([file, model])
        if key not in self.costs:
            self.costs[key] = {"process": {"startup_s": self.startup_s, "import_s": self.imports.get(file)}}
        return self.costs[key]

    def _progress(self, message: dict[str, Any]) -> None:
        if self.calls is not None:
            self.calls.progress()
        self.channel.send(message)

    @staticmethod
    def _unmet(needs, target) -> str:
        import torch

        for need in sorted(needs):
            if need == "cuda":
                ok = torch.cuda.is_available()
            elif need == "causal":
                ok = target.traits.causal is True
            else:
                ok = getattr(target.traits, need) is not None
            if not ok:
                found = getattr(target.traits, need, None) if need != "cuda" else "not available"
                origin = target.traits.source.get(need, "")
                return f"needs {KNOWN_NEEDS[need]} (this model: {need} = {found}{f', from {origin}' if origin else ''})"
        return ""


def _plan_seconds(target) -> tuple[float, float]:
    """(seconds, of which building models) spent so far in this worker measuring this model's step
    costs for the plans (llmcheck.measuring.budget)."""
    found = [v for k, v in target.step_costs.items() if k != "process"]
    return sum(v.get("seconds", 0.0) for v in found), sum(v.get("built_s", 0.0) for v in found)


def _measure_phases(
    phases: dict[str, float], target, planned: tuple[float, float], seconds: float, setup_builds: float
) -> None:
    """Split the seconds of ``measure`` into building models, measuring the step cost for the plan
    (once per worker and model) and the check's own work; ``setup_builds``: seconds of builds before
    ``measure`` (the traits), in the build phase too."""
    now = _plan_seconds(target)
    plan, plan_builds = now[0] - planned[0], now[1] - planned[1]
    builds = target.build_s - setup_builds - plan_builds  # during measure, for the check itself
    phases.update(
        build_s=round(setup_builds + builds, 4),
        builds=target.builds,
        plan_s=round(plan, 4),
        measure_s=round(max(0.0, seconds - builds - plan), 4),
    )


def _had_cuda_oom() -> bool:
    """Whether CUDA raised out-of-memory in this process: the parent then replaces the worker, as
    the allocator's state after an OOM is no base for the next check's measurements."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return False
    return any(torch.cuda.memory_stats(i).get("num_ooms", 0) for i in range(torch.cuda.device_count()))


def _trace_os_exit(fault) -> None:
    """Make ``os._exit`` in user code leave its Python stack in the fault file, so a check that
    ends the worker that way is reported with where it happened. Only in the worker itself:
    forked children (DataLoader workers) end through os._exit routinely."""
    real_exit, worker_pid = os._exit, os.getpid()

    def _exit(status):
        if os.getpid() == worker_pid:
            fault.write(f"os._exit({status}) called:\n")
            fault.flush()
            faulthandler.dump_traceback(fault, all_threads=False)
        real_exit(status)

    os._exit = _exit


def watch_parent(parent: int, every: float = 0.5) -> None:
    """End this worker and its process group when the process that started it is gone (a pytest
    process killed outright, an xdist worker that crashed): the worker runs in a session of its
    own, so nothing else would stop a check that is still running, or hung, for its dead parent.
    A process whose parent is not ``parent`` (forked by llmcheck.isolation.forkserver for it)
    watches ``parent`` by its pid instead."""
    import threading

    adopted = os.getppid() != parent  # forked by the fork server for ``parent`` (a distributed rank)

    from llmcheck.isolation.forkserver import running

    def gone() -> bool:
        return os.getppid() != parent if not adopted else not running(parent)

    def watch():
        while not gone():
            time.sleep(every)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="llmcheck-parent-watch", daemon=True).start()


def _age() -> float:
    """Seconds since this process was created: the interpreter's start and llmcheck's own imports."""
    import psutil

    return max(0.0, time.time() - psutil.Process().create_time())


def main(argv: list[str]) -> None:
    cmd_fd, out_fd, fault_path = int(argv[0]), int(argv[1]), argv[2]
    watch_parent(os.getppid())
    os.set_inheritable(cmd_fd, False)  # user code's subprocesses must not hold our pipes
    os.set_inheritable(out_fd, False)
    fault = open(fault_path, "w")
    faulthandler.enable(fault, all_threads=True)
    faulthandler.register(signal.SIGUSR1, file=fault, all_threads=True)
    _trace_os_exit(fault)
    channel = Channel(out_fd)
    interpreter_s = _age()
    started = time.perf_counter()
    import torch  # noqa: F401  (imported once, before the first command, to time start-up apart)

    startup = {"interpreter_s": interpreter_s, "torch_s": time.perf_counter() - started}
    # What importing torch created lives as long as the process: out of every later collection. A
    # full collection (one before each check, the leak census, the memory sweep) then walks the
    # model's objects only: 0.5 s -> under 1 ms here on a loaded 2-core machine (175k objects).
    # gc.get_objects and gc.get_referrers skip frozen objects: they are no model's, nor a leak's.
    gc.freeze()
    channel.send({"op": "hello", "env": environment(), "pid": os.getpid(), "startup": startup})
    calls = None
    if len(argv) > 3:
        from llmcheck.target.calls import Heartbeat

        calls = Heartbeat(Path(argv[3]))
    worker = ChildLoop(channel, calls, startup)
    with os.fdopen(cmd_fd, "rb") as commands:
        for line in commands:
            msg = json.loads(line)
            if msg["op"] == "stop":
                break
            handler = {"describe": worker.describe, "run": worker.run}[msg["op"]]
            channel.send(handler(msg))
    sys.stdout.flush()
