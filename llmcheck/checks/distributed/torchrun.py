"""The distributed check's rank program under torchrun (and under the check itself): each rank runs
one DDP step on its shard; rank 0 then compares with one process on the whole batch, prints the
verdict and writes ``report.json``. ``python -m llmcheck.ddp_rank`` (docs/checks/distributed.md: torchrun) runs this.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
from pathlib import Path

from llmcheck.checks.distributed.check import compare, judge
from llmcheck.checks.distributed.rank import load_target, parse, run_rank


def report(args, result: dict) -> int:
    """Under torchrun, on rank 0: compare with one process, print the verdict, write report.json."""
    from types import SimpleNamespace

    settings = {**json.loads(args.settings), "device": result["device"]}
    t = load_target(args.file, args.model, settings)
    p = SimpleNamespace(
        per_rank_batch=args.per_rank_batch, lr=args.lr, train_mode=args.train_mode, rtol=args.rtol, atol=args.atol
    )
    m = {
        "outcome": "finished",
        "world_size": len(result["ranks"]),
        "backend": result["ranks"][0]["backend"],
        "per_rank_batch": args.per_rank_batch,
        **compare(t, Path(args.out), result["ranks"], p),
    }
    verdict = judge(m, p)
    (Path(args.out) / "report.json").write_text(
        json.dumps({"status": verdict.status, "message": verdict.message, "metrics": m}, indent=1)
    )
    print(f"llmcheck distributed: {verdict.status.upper()}: {verdict.message}", flush=True)
    return 0 if verdict.status == "passed" else 1


def main(argv: list[str]) -> int:
    args = parse(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.fault:  # started by the check: it signals SIGUSR1 for stacks and is our watchdog
        fault = open(args.fault, "w")  # noqa: SIM115  (open for the process's life: faulthandler writes to it)
        faulthandler.register(signal.SIGUSR1, file=fault, all_threads=True)
        from llmcheck.isolation.child import watch_parent  # no rank outlives the check's worker

        watch_parent(int(os.environ["LLMCHECK_PARENT_PID"]))
        run_rank(args)
        return 0  # the check compares in its worker (it reads gathered.json and each rank's tensors)
    result = run_rank(args)
    if int(os.environ["RANK"]) != 0:
        return 0
    return report(args, result)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
