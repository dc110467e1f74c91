"""The compression check through ``pytest --llmcheck``: outliers break int8, coverage catches skipped
weights, pruning has a breaking point, half precision passes, a student is judged like any variant."""

import importlib.util
import math
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny_gpt.py"
# Latency series kept short: speed is reported in these tests, never judged (benchmarks/ does that).
QUICK = ("--llmcheck-set", "compression.max_time_s=0.05", "--llmcheck-set", "compression.warmup_iters=1")


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Workers inherit one intra-op thread: on a loaded 2-core machine torch's OpenMP threads spin
    against each other (a LayerNorm of 8x16x32 took 8 ms with 2 threads, 0.1 ms with 1, at load 9)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


# A per-token MLP language model whose hidden layer can carry outlier features. ReLU(s*z) = s*ReLU(z)
# for s > 0, so making a few hidden channels 100x larger and the next layer's matching input columns
# 100x smaller leaves the fp32 function as it was, the way outlier features sit in trained LLMs.
RELU_LM = """
import torch
import torch.nn as nn
import llmcheck

V, T = 64, 32


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(self.ln(x))))


class ReluLM(nn.Module):
    def __init__(self, d=32, n_blocks=2):
        super().__init__()
        self.tok = nn.Embedding(V, d)
        self.blocks = nn.ModuleList([Block(d) for _ in range(n_blocks)])
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, V)

    def forward(self, idx):
        x = self.tok(idx)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def plant_outliers(model, channels=(0, 1, 2), scale=100.0):
    with torch.no_grad():
        for block in model.blocks:
            block.fc1.weight[list(channels)] *= scale
            block.fc1.bias[list(channels)] *= scale
            block.fc2.weight[:, list(channels)] /= scale
    return model
"""

OUTLIERS = (
    RELU_LM
    + """

@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T)
def plain():
    return ReluLM()


@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T)
def with_outliers():
    return plant_outliers(ReluLM())
"""
)


def by_model(result) -> dict:
    return {r["model"]: r for r in result.report["results"] if r["check"] == "compression"}


def rows(record) -> dict:
    return {row["variant"]: row for row in record["metrics"]["table"]}


def test_planted_outliers_leave_the_fp32_function_unchanged():
    torch = pytest.importorskip("torch")
    namespace = {}
    exec(RELU_LM, namespace)
    torch.manual_seed(0)
    model = namespace["ReluLM"]()
    ids = torch.randint(0, 64, (2, 16))
    before = model(ids)
    after = namespace["plant_outliers"](model)(ids)
    assert torch.allclose(before, after, rtol=1e-4, atol=1e-5)
    assert model.blocks[0].fc1.weight[:3].abs().mean() > 50 * model.blocks[0].fc1.weight[3:].abs().mean()


def test_outlier_features_fail_int8_dynamic_quantization_while_the_same_model_without_them_passes(run_llmcheck):
    # Gated: int8 is declared shipped (compression.gate); ungated, the same finding is advisory (test_advisory.py).
    only_int8 = ("--llmcheck-set", 'compression.variants=["int8_dynamic"]')
    gate = ("--llmcheck-set", 'compression.gate=["int8_dynamic"]')
    result = run_llmcheck(OUTLIERS, "-k", "compression", *only_int8, *gate, *QUICK)
    found = by_model(result)
    assert found["plain"]["status"] == "passed", found["plain"]["message"]
    outlier = found["with_outliers"]
    assert outlier["status"] == "failed"
    message = outlier["message"]
    assert message.startswith("int8_dynamic: ")
    assert "relative logit error" in message and "> max_rel_error 0.1" in message
    assert "largest local error: blocks." in message and "(Linear -> quantized.dynamic.Linear)" in message
    plain_row, outlier_row = rows(found["plain"])["int8_dynamic"], rows(outlier)["int8_dynamic"]
    assert plain_row["coverage"] == outlier_row["coverage"] == 1.0  # both fully quantized: accuracy is the difference
    assert outlier_row["rel_error"] > 5 * plain_row["rel_error"]
    assert outlier_row["verdict"] == "failed" and plain_row["verdict"] == "passed"


# GPT-2 from transformers: its attention and MLP are transformers' Conv1D, not nn.Linear.
GPT2 = """
import llmcheck
from transformers import GPT2Config, GPT2LMHeadModel


@llmcheck.model
def tiny_gpt2():
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32))
"""


@pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None, reason="needs transformers (pip install llmcheck[hf])"
)
def test_int8_dynamic_quantization_that_skips_gpt2_conv1d_layers_is_an_advisory_coverage_finding(run_llmcheck):
    # Behaviour changed on purpose (issue 14.4): the model is not declared to ship int8, so the
    # finding is advisory, says why the recipe does not apply and what would; the item passes.
    result = run_llmcheck(GPT2, "-k", "compression", "--llmcheck-set", 'compression.variants=["int8_dynamic"]', *QUICK)
    record = by_model(result)["tiny_gpt2"]
    assert record["status"] == "passed", record["message"]
    (finding,) = record["advisory"]
    assert finding.startswith("int8_dynamic: coverage 8% of eligible weight bytes < min_coverage 95%: ")
    assert (
        "int8 dynamic quantization replaces nn.Linear only, and this model's weight matrices are mostly "
        "transformers Conv1D (92% of eligible weight bytes), which it leaves as they were; convert them to nn.Linear"
    ) in finding
    assert "transformer.h.0.attn.c_attn.weight (Conv1D)" in finding
    row = rows(record)["int8_dynamic"]
    assert row["verdict"] == "advisory" and row["unchanged_types"] == {
        "transformers Conv1D": row["eligible_bytes"] - row["compressed_bytes"]
    }
    assert list(row["changed"]) == ["lm_head.weight"]  # only the (tied) LM head is an nn.Linear
    assert len(row["unchanged"]) == 8 and all(u.endswith("(Conv1D)") for u in row["unchanged"])
    assert row["compressed_bytes"] / row["eligible_bytes"] == pytest.approx(row["coverage"])


def test_on_the_example_model_half_precision_and_light_pruning_pass_and_heavy_pruning_fails(run_llmcheck):
    settings = (
        'compression.variants=["fp16", "bf16", "prune_unstructured", "prune_structured"]',
        "compression.sparsities=[0.05, 0.9]",
        'compression.gate=["fp16", "bf16", "prune_unstructured", "prune_structured"]',  # judged as shipped
    )
    args = [arg for s in settings for arg in ("--llmcheck-set", s)]
    result = run_llmcheck(EXAMPLE.read_text(), "-k", "compression and not finetune", *args, *QUICK)
    record = by_model(result)["tiny_gpt"]
    table = rows(record)
    verdicts = {name: row["verdict"] for name, row in table.items()}
    assert verdicts == {
        "fp16": "passed",
        "bf16": "passed",
        "prune_unstructured@0.05": "passed",
        "prune_unstructured@0.9": "failed",
        "prune_structured@0.05": "failed",
        "prune_structured@0.9": "failed",
    }, record["message"]
    assert record["status"] == "failed"
    assert "prune_unstructured@0.9: " in record["message"] and "prune_unstructured@0.05:" not in record["message"]
    assert "fp16:" not in record["message"] and "bf16:" not in record["message"]
    assert table["fp16"]["size_ratio"] < 0.55 and table["bf16"]["coverage"] == 1.0
    assert table["prune_unstructured@0.9"]["changed"]["blocks.0.attn.qkv.weight"] == "90% zeros"
    # Pruned weights are stored dense: the file does not shrink, and the table says so.
    assert table["prune_unstructured@0.9"]["size_ratio"] == pytest.approx(1.0, abs=0.01)


STUDENTS = (
    RELU_LM
    + '''

def distil(teacher, student, steps=60):
    """Train ``student`` on the teacher's softened next-token distributions over random tokens."""
    teacher.eval()
    optimizer = torch.optim.Adam(student.parameters(), lr=3e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        ids = torch.randint(0, V, (8, 16), generator=generator)
        with torch.no_grad():
            target = teacher(ids)
        loss = llmcheck.distill.loss(student(ids), target, labels=None, temperature=2.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return student


# A student a quarter of the width is held to a looser accuracy gap than the defaults (made for int8).
GAP = {"max_kl": 0.05, "min_top1": 0.4, "max_rel_error": 0.5}
SETTINGS = {"compression": {"variants": ["compressed"], "overrides": {"compressed": GAP}}}


@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T, checks=SETTINGS)
def teacher():
    return ReluLM(d=32, n_blocks=2)


@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T, checks=SETTINGS)
def same_teacher():
    return ReluLM(d=32, n_blocks=2)


@llmcheck.compressed(models="teacher")
def distilled_student():
    return distil(teacher(), ReluLM(d=16, n_blocks=1))


@llmcheck.compressed(models="same_teacher")
def untrained_student():
    return ReluLM(d=16, n_blocks=1)


@llmcheck.eval_data
def held_out():
    generator = torch.Generator().manual_seed(123)
    for _ in range(4):
        yield torch.randint(0, V, (4, 16), generator=generator)
'''
)


def test_a_distilled_student_is_judged_on_its_accuracy_gap_size_and_speed(run_llmcheck):
    result = run_llmcheck(STUDENTS, "-k", "compression", *QUICK)
    found = by_model(result)
    distilled, untrained = rows(found["teacher"])["compressed"], rows(found["same_teacher"])["compressed"]
    assert found["teacher"]["status"] == "passed", found["teacher"]["message"]
    assert found["same_teacher"]["status"] == "failed"
    assert "next-token KL" in found["same_teacher"]["message"] and "> max_kl 0.05" in found["same_teacher"]["message"]
    assert distilled["kl"] < untrained["kl"] / 4
    assert found["teacher"]["metrics"]["inputs"] == "eval_data"
    for row in (distilled, untrained):
        assert row["ppl"] > 0 and row["ppl_base"] > 0
        assert row["ppl_increase"] == pytest.approx(row["ppl"] / row["ppl_base"] - 1, rel=1e-6)
        assert row["size_ratio"] < 0.5  # d=16, 1 block against d=32, 2 blocks
        assert row["speed_ratio"] > 0 and math.isfinite(row["speed_ratio"])
        assert row["coverage"] == 1.0  # every teacher matrix is smaller or gone in the student
    assert "compressed (" in found["teacher"]["message"] and "x speed" in found["teacher"]["message"]


@pytest.mark.skipif(importlib.util.find_spec("torchao") is not None, reason="torchao is installed")
def test_torchao_variants_skip_naming_the_extra_to_install(tmp_path, monkeypatch):
    # In-process (no worker): the check's measure on a Target, as the worker would call it.
    pytest.importorskip("torch")
    from llmcheck.checks.compression.check import CHECK
    from llmcheck.context import Context
    from llmcheck.results import Skip
    from llmcheck.settings import Params
    from llmcheck.target.model import Target, load_declarations

    path = tmp_path / "outliers.py"
    path.write_text(OUTLIERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    models, hooks = load_declarations(path)
    target = Target(models[0], hooks[models[0].name], {})
    params = Params({k: p.default for k, p in CHECK.params.items()}, variants=["torchao_int8", "torchao_int4"])
    with pytest.raises(Skip) as info:
        CHECK.measure(Context(target, tmp_path, lambda message: None), params)
    assert str(info.value).startswith(
        "no variant applies: torchao_int8, torchao_int4 skipped: torchao is not importable"
    )
    assert str(info.value).endswith("pip install llmcheck[torchao]")
