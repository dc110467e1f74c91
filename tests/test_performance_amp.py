"""The amp check through ``pytest --llmcheck``: bfloat16 autocast on CPU within tolerance, a
precision-sensitive operation caught with its module named, float16 skipped on CPU with the
reason, and "AMP slower" flagged (a model that sleeps only under autocast decides it, not noise)."""

from model_sources import CLEAN, variant

TINY = "@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T)\ndef tiny():\n    return TinyLM()\n"

ONLY_AMP = (
    "-m",
    "performance",
    "--llmcheck-set",
    "latency=false",
    "--llmcheck-set",
    "throughput=false",
    "--llmcheck-set",
    "amp.num_threads=1",
    "-rA",
)

MODELS = '''
import time


class PositionFeatures(nn.Module):
    """Adds sinusoidal position features to the residual stream."""

    def __init__(self, in_activation_dtype):
        super().__init__()
        self.lin = nn.Linear(D, D)
        self.in_activation_dtype = in_activation_dtype

    def forward(self, x):
        h = self.lin(x)  # bfloat16 under autocast
        dtype = h.dtype if self.in_activation_dtype else torch.float32  # the bug: angles in bfloat16
        angles = (
            torch.arange(x.shape[1], device=x.device, dtype=dtype)[:, None] * 10.1
            + torch.arange(D, device=x.device, dtype=dtype) * 0.37
        )
        return x + h + 0.5 * torch.sin(angles)


class PositionalLM(TinyLM):
    def __init__(self, in_activation_dtype):
        super().__init__()
        self.features = PositionFeatures(in_activation_dtype)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        x = self.features(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class SlowUnderAutocast(TinyLM):
    def forward(self, idx):
        if torch.is_autocast_enabled("cpu"):
            time.sleep(0.01)  # autocast that costs time instead of saving it
        return super().forward(idx)


@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T, ships=["bfloat16"])  # gated; ungated: test_advisory.py
def positions_in_bf16():
    return PositionalLM(in_activation_dtype=True)


@llmcheck.model(
    causal=True, vocab_size=V, max_seq_len=T, checks={"amp": {"max_iqr_ratio": 100.0, "min_valid_samples": 3}}
)
def slow_amp():
    return SlowUnderAutocast()
'''


def test_bf16_autocast_passes_on_a_clean_model_and_a_precision_bug_is_caught_with_its_module(run_llmcheck):
    result = run_llmcheck(variant(TINY, "", CLEAN) + MODELS, *ONLY_AMP)
    recs = {r["id"].split("::", 1)[1]: r for r in result.report["results"] if r["check"] == "amp"}
    clean = recs["slow_amp::amp[bfloat16]"]  # numerically clean; slower under autocast by a 10 ms sleep
    assert clean["status"] == "passed", clean["message"]
    m = clean["metrics"]
    assert m["outputs"]["rel_error"] <= m["output_rtol"] and m["gradients"]["rel_error"] <= m["grad_rtol"]
    assert m["outputs"]["decisive_top1_agreement"] in (None, 1.0)
    assert {"float32_forward_ms", "bfloat16_forward_ms"} <= set(clean["samples"])
    assert m["speed"]["amp_slower"] and m["speed"]["ci_high"] < 1.0 and "AMP slower: speed-up 0." in clean["message"]
    assert clean["advisory"] and clean["advisory"][0].startswith("AMP slower: speed-up 0.")  # not gated: advisory
    buggy = recs["positions_in_bf16::amp[bfloat16]"]
    assert buggy["status"] == "failed"
    assert "bfloat16 autocast logits differ from float32 by rel. error" in buggy["message"]
    assert "first module over tolerance: features (PositionFeatures)" in buggy["message"]
    assert recs["slow_amp::amp[float16]"]["status"] == "skipped"
    assert "float16 autocast is measured on CUDA only" in recs["slow_amp::amp[float16]"]["message"]


def test_amp_slower_fails_only_when_asked_and_only_with_confidence():
    from llmcheck.checks import amp
    from llmcheck.settings import Params

    p = Params({k: v.default for k, v in amp.CHECK.params.items()})
    series = {"median_ms": 2.0, "invalid_reasons": []}
    m = {
        "config": {"precision": "bfloat16"},
        "eps": 2**-8,
        "output_rtol": 0.06,
        "grad_rtol": 0.12,
        "outputs": {
            "rel_error": 0.004,
            "decisive_top1_agreement": 1.0,
            "decisive_positions": 20,
            "top1_agreement": 1.0,
        },
        "gradients": {"rel_error": 0.005},
        "speed": {
            "speedup": 0.5,
            "ci_low": 0.45,
            "ci_high": 0.55,
            "valid": True,
            "amp_slower": True,
            "float32": series,
            "bfloat16": series,
        },
    }
    assert amp.judge(m, p).status == "passed" and "AMP slower" in amp.judge(m, p).message
    assert amp.judge(m, Params({**p, "fail_if_slower": True})).status == "failed"
    unsure = {**m, "speed": {**m["speed"], "ci_high": 1.1, "amp_slower": False}}
    assert amp.judge(unsure, Params({**p, "fail_if_slower": True})).status == "passed"
