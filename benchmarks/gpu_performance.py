"""The latency, throughput and amp checks on a CUDA GPU: float32, bfloat16 and float16 autocast,
eager, torch.compile and CUDA Graphs, on the example model. One prepared run for a GPU machine.

    python benchmarks/gpu_performance.py [--out DIR]

Prints one line per item (status, the figures that matter) and writes the JSON report to
DIR/gpu-report.json (DIR defaults to $OUT, else the current folder). Exit status 2 without CUDA.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = [
    "latency.batch_sizes=[1, 8]",
    'latency.modes=["eager", "compile", "cuda_graphs"]',
    "latency.max_time_s=0.5",
    'throughput.modes=["eager", "compile", "cuda_graphs"]',
    "throughput.batch_sizes=[1, 8, 64]",
    "throughput.parallel_workers=2",
    "throughput.parallel_time_s=1.0",
]


def summary(record: dict) -> str:
    m = record.get("metrics") or {}
    parts = [f"{record['status']:8s} {record['id'].split('::', 1)[1]}"]
    if "forward" in m:
        f = m["forward"]
        parts.append(
            f"p50 {f['median_ms']:.4g} ms n={f['n']} iqr/med {f['iqr_ratio']:.1%} "
            f"valid={f['valid']} setup={m['setup_s']}"
        )
    if m.get("generation"):
        g = m["generation"]
        parts.append(f"ttft {g['ttft']['median_ms']:.4g} ms decode {g['decode']['tokens_per_s']:.4g} tok/s")
    if "knee" in m and m["knee"]["inference"]:
        parts.append(f"knee bs {m['knee']['inference']['batch_size']}, MFU {m['flops']['inference']['mfu']}")
    if "speed" in m:
        s = m["speed"]
        parts.append(
            f"rel err {m['outputs']['rel_error']:.3g} "
            f"speed-up {s['speedup']:.2f}x [{s['ci_low']:.2f}, {s['ci_high']:.2f}]"
        )
    if record["status"] not in ("passed",) and not m:
        parts.append(record["message"][:300])
    return " | ".join(parts)


def main() -> int:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to run")
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = out / "gpu-report.json"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "--llmcheck",
        str(ROOT / "examples" / "tiny_gpt.py"),
        "-m",
        "performance",
        "-k",
        "not finetune",
        "-p",
        "no:cacheprovider",
        "-q",
        "--llmcheck-device",
        "cuda",
        "--llmcheck-json",
        str(report),
    ]
    for setting in SETTINGS:
        cmd += ["--llmcheck-set", setting]
    print(torch.cuda.get_device_name(0), "torch", torch.__version__)
    done = subprocess.run(cmd, check=False, cwd=out, capture_output=True, text=True)
    print(done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-2000:])
    for record in json.loads(report.read_text())["results"]:
        print(summary(record))
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
