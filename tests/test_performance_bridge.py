"""llmcheck's measurements as pytest-benchmark entries: saved with --benchmark-save and compared
with --benchmark-compare / --benchmark-compare-fail on the next run (a 20 ms sleep is the regression)."""

from model_sources import CLEAN, variant

ARGS = (
    "-m",
    "performance",
    "--llmcheck-set",
    "throughput=false",
    "--llmcheck-set",
    "amp=false",
    "--llmcheck-set",
    "latency.num_threads=1",
    "--llmcheck-set",
    "latency.batch_sizes=[1]",
    "--llmcheck-set",
    'latency.precisions=["float32"]',
    "--llmcheck-set",
    "latency.processes=1",
)
SLOWER = variant(
    "def forward(self, idx):\n",
    "def forward(self, idx):\n        time.sleep(0.02)\n",
    variant("import torch\n", "import time\nimport torch\n"),
)


def test_saved_measurements_are_compared_by_pytest_benchmark_and_a_slowdown_fails_the_gate(run_llmcheck, pytester):
    storage = f"file://{pytester.path / 'bench-store'}"
    first = run_llmcheck(CLEAN, *ARGS, "--benchmark-save", "base", "--benchmark-storage", storage)
    assert first.ret == 0
    saved = list((pytester.path / "bench-store").rglob("*base.json"))
    assert len(saved) == 1
    # pytest-benchmark raises PerformanceRegression from its terminal summary: a subprocess shows the
    # exit code and the output a CI job would see.
    (pytester.path / "model.py").write_text(SLOWER)
    second = pytester.runpytest_subprocess(
        "--llmcheck",
        "model.py",
        "-p",
        "no:cacheprovider",
        *ARGS,
        "--benchmark-compare",
        "0001",
        "--benchmark-storage",
        storage,
        "--benchmark-compare-fail",
        "median:50%",
    )
    second.stdout.fnmatch_lines(
        [
            "*latency[[]bs=1-sl=16-float32-eager[]]::forward (0001_base)*",
            "*latency[[]bs=1-sl=16-float32-eager[]]::forward (NOW)*",
        ]
    )
    output = second.stdout.str() + second.stderr.str()
    assert "Performance has regressed" in output
    assert "latency[bs=1-sl=16-float32-eager]::forward (0001_base) - Field 'median' has failed" in output
    assert second.ret != 0
