"""Start the ranks of the distributed check and watch them: the parent side (no torch).

Each rank is ``python -m llmcheck.checks.distributed.torchrun`` in its own session (so its whole
tree can be killed): forked by the session's fork server when there is one (torch already
imported: llmcheck.isolation.forkserver), started as a new interpreter otherwise. The ranks
rendezvous through a FileStore in the scratch folder: no port to pick, none to collide with a
parallel run. Every rank appends its phase (``joined``, ``build``, ``forward``, ``backward``,
``optimizer``, ``write``, ``gather``, ``done``) and the time to ``rankN.phase``. Once every rank
has joined the process group, the step must finish within ``collective_timeout``; otherwise each rank's
Python stack is taken (SIGUSR1 on which the rank's
``faulthandler`` writes every thread, as the worker does, see ``llmcheck.isolation.stacks``) and all ranks
are killed, descendants included. The process group's own timeout is set above that deadline as
a backstop, far below its 30-minute gloo / 10-minute NCCL default.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from llmcheck.isolation import forkserver, frames, stacks
from llmcheck.isolation.output import read_tail
from llmcheck.isolation.worker import describe_exit

POLL = 0.05  # seconds between looks at the ranks
TAIL = 2_000  # bytes of a failed rank's output kept in the message
EVIDENCE = 64_000  # bytes of it searched for the exception and the model's line
FOLLOW = 3.0  # seconds the other ranks get to exit on their own once one has failed
# What a rank says when it failed because a peer went away: the consequence, never the cause.
PEER_LOST = re.compile(
    r"Connection closed by peer|Connection reset by peer|remote worker crashing|Broken pipe"
    r"|NCCL communicator was aborted|Socket Timeout",
    re.I,
)


@dataclass
class Rank:
    rank: int
    proc: subprocess.Popen | forkserver.Forked
    log: Path
    fault: Path
    phase_file: Path
    started: float  # time.time() at the start, to date the phases

    def _phases(self) -> list[list[str]]:
        try:
            return [ln.split() for ln in self.phase_file.read_text().splitlines() if ln.strip()]
        except FileNotFoundError:
            return []

    def phase(self) -> str:
        """The phase the rank is in (the last one it reported), or ``start-up``."""
        phases = self._phases()
        return phases[-1][0] if phases else "start-up"

    def times(self) -> dict[str, float]:
        """Seconds from the rank's start to each phase it reached."""
        return {name: round(float(at) - self.started, 3) for name, at in self._phases()}


def start(job: dict, out: Path, world_size: int) -> list[Rank]:
    """Start ``world_size`` ranks of ``python -m llmcheck.ddp_rank`` with the job's arguments."""
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "rendezvous.store").unlink(missing_ok=True)  # a FileStore file left over would be joined
    env = dict(
        os.environ,
        WORLD_SIZE=str(world_size),
        LLMCHECK_PARENT_PID=str(os.getpid()),
        LLMCHECK_DDP_INIT=f"file://{out / 'rendezvous.store'}",
        PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
    )
    env.setdefault("OMP_NUM_THREADS", "1")  # ranks share the cores; oversubscription slows tiny ops 80x
    ranks = []
    for r in range(world_size):
        fault, log = out / f"rank{r}.fault", out / f"rank{r}.log"
        cmd = [
            sys.executable,
            "-m",
            "llmcheck.checks.distributed.torchrun",
            *job["argv"],
            "--out",
            str(out),
            "--fault",
            str(fault),
        ]
        rank_env = dict(env, RANK=str(r), LOCAL_RANK=str(r))
        started = time.time()
        proc = forkserver.fork(cmd[2], cmd[3:], rank_env, job.get("cwd"), log, out / f"rank{r}.exit")
        if proc is None:  # no fork server (under xdist, LLMCHECK_NO_FORKSERVER=1, or it is gone)
            with open(log, "wb") as f:
                proc = subprocess.Popen(
                    cmd,
                    env=rank_env,
                    stdin=subprocess.DEVNULL,
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    cwd=job.get("cwd"),
                )
        ranks.append(Rank(r, proc, log, fault, out / f"rank{r}.phase", started))
    return ranks


def forked(rank: Rank) -> bool:
    """Whether the fork server started this rank."""
    return isinstance(rank.proc, forkserver.Forked)


def watch(ranks: list[Rank], startup_timeout: float, collective_timeout: float, progress) -> dict:
    """Wait for the ranks: {"outcome": "finished"}, or the evidence of a hang or a failed rank.
    Every rank is gone when this returns."""
    started, joined = time.monotonic(), None
    try:
        while True:
            codes = [r.proc.poll() for r in ranks]
            if all(c == 0 for c in codes):
                return {
                    "outcome": "finished",
                    "phases_s": [r.times() | {"exit": round(time.time() - r.started, 3)} for r in ranks],
                }
            if any(c not in (None, 0) for c in codes):
                first = _first([(r, c) for r, c in zip(ranks, codes) if c not in (None, 0)])
                _wait_all(ranks, FOLLOW)  # the others may fail on their own (a peer closed the connection)
                return _failed(ranks, first)
            now = time.monotonic()
            if joined is None and all(r.phase() != "start-up" for r in ranks):
                joined = now
                progress(phase="step", ranks=len(ranks))
            if joined is None and now - started > startup_timeout:
                return _stuck(ranks, "startup", startup_timeout)
            if joined is not None and now - joined > collective_timeout:
                return _stuck(ranks, "hang", collective_timeout)
            time.sleep(POLL)
    finally:
        left = kill(ranks)
        if left:
            raise RuntimeError(f"rank process(es) {left} survived SIGKILL")


def kill(ranks: list[Rank]) -> list[int]:
    """SIGKILL every rank's session and every descendant (listed first, so those that left the
    session are found too); the pids still alive after 5 s (none, unless the kernel is stuck)."""
    known = [d for r in ranks for d in stacks.descendants(r.proc.pid)]
    left: set[int] = set()
    for r in ranks:
        if r.proc.poll() is None:
            try:  # a forked rank may not have called setsid yet: its group would not exist
                os.kill(r.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        left.update(stacks.kill_tree(r.proc.pid, known))
        try:
            r.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            left.add(r.proc.pid)
    return sorted(left)


def _stuck(ranks: list[Rank], outcome: str, limit: float) -> dict:
    """Every live rank's stacks, where each is stuck and in which phase."""
    stuck, texts = [], []
    for r in ranks:
        if r.proc.poll() is not None:
            stuck.append({"rank": r.rank, "phase": r.phase(), "at": "", "exited": describe_exit(r.proc.returncode)})
            continue
        sections = [dataclasses.replace(s, role=f"rank {r.rank}") for s in stacks.collect(r.proc.pid, r.fault)]
        text = stacks.render(sections)
        own = next((s.text for s in sections if s.pid == r.proc.pid and s.source == "faulthandler"), "")
        stuck.append(
            {
                "rank": r.rank,
                "phase": r.phase(),
                "pid": r.proc.pid,
                "at": frames.user_frame(own) or frames.innermost_frame(own),
            }
        )
        texts.append(text or f"--- rank {r.rank} pid {r.proc.pid}: wrote no stack ---\n")
    return {"outcome": outcome, "limit_s": limit, "stuck": stuck, "stacks": "\n".join(texts)}


def _wait_all(ranks: list[Rank], seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end and any(r.proc.poll() is None for r in ranks):
        time.sleep(POLL)


def _first(failed: list[tuple[Rank, int]]) -> list[int]:
    """The ranks that failed first: by the time the fork server reaped them when it did (its
    statuses arrive a poll late, so a rank that failed because its peer did is often seen in the
    same poll), else every rank seen failed in this poll."""
    times = [getattr(r.proc, "exited_at", None) for r, _ in failed]
    if None in times:
        return [r.rank for r, _ in failed]
    return [r.rank for (r, _), t in zip(failed, times) if t == min(times)]


def _failed(ranks: list[Rank], first: list[int]) -> dict:
    """Ranks exited with an error: which failed first, each one's status, the exception its output
    ends with and the tail of that output; the stacks of those still running."""
    failed = []
    for r in ranks:
        code = r.proc.poll()
        if code not in (None, 0):
            evidence = _tail(r.log, EVIDENCE)  # a traceback's user frame may sit well above its last line
            output = _tail(r.log)
            failed.append(
                {
                    "rank": r.rank,
                    "exit": describe_exit(code),
                    "phase": r.phase(),
                    "first": r.rank in first,
                    "peer_lost": bool(PEER_LOST.search(_last_exception(evidence))),
                    "error": _last_exception(evidence),
                    "at": frames.traceback_user_line(evidence),
                    "output": output,
                }
            )
    _blame_causes(failed)
    running = [r for r in ranks if r.proc.poll() is None]
    stuck = _stuck(running, "hang", 0) if running else {"stuck": [], "stacks": ""}
    return {"outcome": "rank_failed", "failed": failed, "stuck": stuck["stuck"], "stacks": stuck["stacks"]}


def _blame_causes(failed: list[dict]) -> None:
    """A rank whose error is a lost peer (gloo's "Connection closed by peer") failed because
    another did: when some rank failed otherwise, those ranks are first, whatever the exit times
    say (the rank that raised may spend longer unwinding than its peer takes to notice)."""
    causes = [f for f in failed if not f["peer_lost"]]
    if causes and any(f["first"] and f["peer_lost"] for f in failed):
        first = {f["rank"] for f in causes if f["first"]} or {f["rank"] for f in causes}
        for f in failed:
            f["first"] = f["rank"] in first
    for f in failed:
        del f["peer_lost"]


def _last_exception(output: str) -> str:
    """The last line of a traceback (``Error: message``), without torch's ``[rankN]:`` prefix."""
    lines = [re.sub(r"^\[rank\d+\]:\s?", "", ln).strip() for ln in output.splitlines()]
    found = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception|Exit)\b.*", ln)]
    last = found[-1] if found else (lines[-1] if lines else "")
    return re.sub(r"^llmcheck(\.\w+)*\.UserCodeError: ", "", last)  # its message already says whose code raised


def _tail(path: Path, size: int = TAIL) -> str:
    """The last ``size`` bytes of a rank's log, read by seeking: a rank that printed gigabytes costs no more."""
    text, more = read_tail(path, size)
    return "[...]\n" + text if more else text


def gathered(out: Path) -> list[dict]:
    return json.loads((out / "gathered.json").read_text())
