"""Suite time against model size: the quick and full profiles on Hugging Face GPT-2 configurations
of increasing size, with random weights built from a config (no network, no download).

    python benchmarks/suite_scaling.py [--sizes 2x128,4x256,6x512,12x768] [--profile quick --profile full]

Each size is ``LAYERSxWIDTH`` (12x768 is GPT-2 small's shape: 124M parameters with GPT-2's 50257-token
vocabulary and 1024 positions). For each profile and size one ``pytest --llmcheck`` runs in a
subprocess; the table gives each check's seconds (its items' ``duration_s`` summed, from the JSON
report) per size, with the status when it did not pass, and the run's wall time. Checks plan their
work from the model's measured step time (llmcheck.measuring.budget), so their time should grow far
less than the model; a check whose floor does not fit its budget shows as ``skip``: its message
says what it would need. Times on a shared machine are inflated by its load, printed per run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import defaultdict
from pathlib import Path

VOCAB, POSITIONS = 50257, 1024
MODEL = """
import llmcheck
from transformers import GPT2Config, GPT2LMHeadModel


@llmcheck.model()
def gpt2_{layers}x{width}():
    config = GPT2Config(n_layer={layers}, n_embd={width}, n_head={heads}, n_positions={positions}, vocab_size={vocab})
    return GPT2LMHeadModel(config)
"""


def parameters(layers: int, width: int) -> int:
    """GPT-2's parameter count: embeddings (tied head), blocks of 12 w^2 + 13 w, the final LayerNorm."""
    return VOCAB * width + POSITIONS * width + layers * (12 * width * width + 13 * width) + 2 * width


def run(layers: int, width: int, profile: str, minutes: float, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / f"gpt2_{layers}x{width}.py"
        heads = max(1, width // 64)
        source = MODEL.format(layers=layers, width=width, heads=heads, positions=POSITIONS, vocab=VOCAB)
        model.write_text(textwrap.dedent(source))
        load = os.getloadavg()[0]
        started = time.perf_counter()
        command = [sys.executable, "-m", "pytest", "--llmcheck", str(model), "-q", "-p", "no:cacheprovider"]
        command += ["--llmcheck-profile", profile, "--llmcheck-json", f"{tmp}/r.json", *extra]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        try:
            out = subprocess.run(command, cwd=tmp, capture_output=True, text=True, timeout=minutes * 60, env=env)
            last = (out.stdout.strip().splitlines() or ["(no output)"])[-1]
        except subprocess.TimeoutExpired:
            last = f"stopped after {minutes:g} minutes"
        wall = time.perf_counter() - started
        path = Path(f"{tmp}/r.json")
        records = json.loads(path.read_text()).get("results", []) if path.exists() else []
    return {"wall": wall, "load": (load, os.getloadavg()[0]), "last": last, "records": records}


def per_check(records: list[dict]) -> dict[str, tuple[float, str]]:
    """Check -> (seconds over its items, the worst status among them)."""
    order = ["passed", "skipped", "failed", "error", "timeout", "crashed"]
    seconds: dict[str, float] = defaultdict(float)
    status: dict[str, str] = {}
    for r in records:
        seconds[r["check"]] += r.get("duration_s") or 0.0
        worst = status.get(r["check"], "passed")
        status[r["check"]] = max(worst, r["status"], key=lambda s: order.index(s) if s in order else 0)
    return {name: (seconds[name], status[name]) for name in seconds}


def table(profile: str, sizes: list[tuple[int, int]], runs: list[dict]) -> str:
    head = [f"{layers}x{width} ({parameters(layers, width) / 1e6:.1f}M)" for layers, width in sizes]
    rows = [f"| {profile} | " + " | ".join(head) + " |", "|---|" + "---:|" * len(sizes)]
    found = [per_check(run["records"]) for run in runs]
    for name in sorted({n for f in found for n in f}):
        cells = []
        for f in found:
            seconds, status = f.get(name, (None, ""))
            cell = "-" if seconds is None else f"{seconds:.1f}"
            cells.append(cell + ("" if status in ("passed", "") else f" {status[:4]}"))
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    rows.append("| **wall (end to end)** | " + " | ".join(f"**{run['wall']:.0f}**" for run in runs) + " |")
    rows.append(
        "| load average (start-end) | " + " | ".join(f"{a:.1f}-{b:.1f}" for a, b in (r["load"] for r in runs)) + " |"
    )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="2x128,4x256,6x512,12x768", help="LAYERSxWIDTH, comma-separated")
    parser.add_argument("--profile", action="append", choices=("quick", "full", "default"))
    parser.add_argument("--minutes", type=float, default=30, help="stop one run after this long")
    args, extra = parser.parse_known_args()
    sizes = [tuple(int(x) for x in s.split("x")) for s in args.sizes.split(",")]
    print(f"load average now: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    for profile in args.profile or ["quick", "full"]:
        runs = []
        for layers, width in sizes:
            runs.append(run(layers, width, profile, args.minutes, extra))
            done = runs[-1]
            print(
                f"{profile} {layers}x{width} ({parameters(layers, width) / 1e6:.1f}M parameters): "
                f"{done['wall']:.0f} s, load {done['load'][0]:.1f}-{done['load'][1]:.1f}; {done['last']}",
                flush=True,
            )
            for r in done["records"]:
                if r["status"] not in ("passed", "skipped") or r["message"].startswith("inconclusive"):
                    print(f"    {r['id'].split('::', 1)[-1]} [{r['status']}] {r['message'][:300]}")
        print("\n" + table(profile, sizes, runs) + "\n", flush=True)


if __name__ == "__main__":
    main()
