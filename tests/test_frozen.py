"""frozen: frozen layers and their buffers must not move during training."""

from model_sources import CLEAN, variant

FREEZE = """
@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T)
def tiny_ft():
    model = {build}
    model.blocks[0].requires_grad_(False)
    return model
"""


def test_a_model_without_frozen_parameters_skips_frozen_with_the_reason(run_llmcheck):
    result = run_llmcheck(CLEAN, "-k", "frozen", "-rs")
    assert result.by_check["frozen"]["status"] == "skipped"
    result.stdout.fnmatch_lines(["SKIPPED*model.py:*no parameter has requires_grad=False*"])


def test_a_frozen_block_stays_unchanged_and_passes(run_llmcheck):
    result = run_llmcheck(CLEAN + FREEZE.format(build="TinyLM()"), "-k", "tiny_ft and frozen")
    record = result.by_check["frozen"]
    assert record["status"] == "passed", record["message"]
    assert record["metrics"]["frozen_modules"] == ["blocks.0"]


def test_batchnorm_statistics_drifting_in_a_frozen_block_fail_naming_the_buffer(run_llmcheck):
    source = variant("self.ln = nn.LayerNorm(D)", "self.ln = SeqBatchNorm(D)")
    source = source.replace(
        "class Block(nn.Module):",
        "class SeqBatchNorm(nn.BatchNorm1d):\n"
        "    def forward(self, x):\n        return super().forward(x.transpose(1, 2)).transpose(1, 2)\n\n\n"
        "class Block(nn.Module):",
        1,
    )
    record = run_llmcheck(source + FREEZE.format(build="TinyLM()"), "-k", "tiny_ft and frozen").by_check["frozen"]
    assert record["status"] == "failed"
    assert "buffer blocks.0.ln.running_mean of frozen module blocks.0 changed (max |Δ| = " in record["message"]
    assert "put frozen modules in eval()" in record["message"]


def test_code_that_updates_a_frozen_weight_is_caught(run_llmcheck):
    source = variant(
        "        for block in self.blocks:\n",
        "        if self.training:\n            with torch.no_grad():\n"
        "                self.blocks[0].proj.weight.add_(1e-3)\n        for block in self.blocks:\n",
    )
    record = run_llmcheck(source + FREEZE.format(build="TinyLM()"), "-k", "tiny_ft and frozen").by_check["frozen"]
    assert record["status"] == "failed"
    assert "frozen parameter blocks.0.proj.weight changed (max |Δ| = 0.003" in record["message"]
