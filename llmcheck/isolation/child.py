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
    def __init__(self, channel: Channel, calls=None):
        self.channel = channel
        self.calls = calls  # a Heartbeat the parent reads, or None
        self.checks = None
        self.tmp = Path(tempfile.mkdtemp(prefix="llmcheck-worker-", dir=os.environ.get("LLMCHECK_TMP")))

    def describe(self, msg: dict[str, Any]) -> dict[str, Any]:
        from llmcheck.target.model import ContractError, load_declarations

        path = Path(msg["file"])
        try:
            models, _ = load_declarations(path)
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

    def run(self, msg: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        result = self._run(msg)
        result.duration_s = time.perf_counter() - started
        sys.stdout.flush()
        sys.stderr.flush()
        return {"op": "result", "result": result.to_json(), "retire": _had_cuda_oom()}

    def _run(self, msg: dict[str, Any]) -> Result:
        import torch

        from llmcheck.context import Context
        from llmcheck.target.model import ContractError, Target, UserCodeError, load_declarations

        if self.checks is None:
            self.checks = load_checks()
        check = self.checks[msg["check"]]
        params = Params(msg["params"])
        torch.set_grad_enabled(True)
        gc.collect()
        ctx = None
        try:
            models, hooks = load_declarations(Path(msg["file"]))
            decl = next(m for m in models if m.name == msg["model"])
            target = Target(decl, hooks[decl.name], msg["settings"], path=Path(msg["file"]))
            if self.calls is not None:
                target.calls = self.calls
            unmet = self._unmet(check.needs, target)
            if unmet:
                return Result("skipped", unmet)
            workdir = Path(tempfile.mkdtemp(prefix=f"{check.name}-", dir=self.tmp))
            ctx = Context(target, workdir, self._progress)
            ctx.variant = dict(msg.get("variant") or {})
            metrics = check.measure(ctx, params)
            verdict = check.judge(metrics, params)
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
    own, so nothing else would stop a check that is still running, or hung, for its dead parent."""
    import threading

    def watch():
        while os.getppid() == parent:
            time.sleep(every)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="llmcheck-parent-watch", daemon=True).start()


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
    import torch  # noqa: F401  (imported once, before the first command, to time start-up apart)

    channel.send({"op": "hello", "env": environment(), "pid": os.getpid()})
    calls = None
    if len(argv) > 3:
        from llmcheck.target.calls import Heartbeat

        calls = Heartbeat(Path(argv[3]))
    worker = ChildLoop(channel, calls)
    with os.fdopen(cmd_fd, "rb") as commands:
        for line in commands:
            msg = json.loads(line)
            if msg["op"] == "stop":
                break
            handler = {"describe": worker.describe, "run": worker.run}[msg["op"]]
            channel.send(handler(msg))
    sys.stdout.flush()
