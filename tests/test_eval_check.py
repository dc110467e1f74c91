"""eval: eval-mode outputs must be deterministic and independent of grad mode."""

from model_sources import CLEAN, variant


def test_a_clean_model_passes_eval(run_llmcheck):
    record = run_llmcheck(CLEAN, "-k", "eval").by_check["eval"]
    assert record["status"] == "passed", record["message"]
    assert set(record["metrics"]["comparisons"]) == {"repeat", "no_grad", "inference_mode", "toggle"}


def test_dropout_left_active_in_eval_fails_naming_the_module(run_llmcheck):
    source = variant("self.drop = nn.Dropout(0.1)", "self.drop = AlwaysDropout(0.1)")
    source = source.replace(
        "class Block(nn.Module):",
        "class AlwaysDropout(nn.Module):\n"
        "    def __init__(self, p):\n        super().__init__()\n        self.p = p\n\n"
        "    def forward(self, x):\n        return F.dropout(x, self.p, training=True)\n\n\n"
        "class Block(nn.Module):",
        1,
    )
    record = run_llmcheck(source, "-k", "eval").by_check["eval"]
    assert record["status"] == "failed"
    assert "two eval forwards: outputs differ" in record["message"]
    assert "first differing module: blocks.0.drop (AlwaysDropout)" in record["message"]


def test_a_train_override_that_leaves_a_trace_fails_the_toggle_comparison(run_llmcheck):
    source = variant(
        "    def forward(self, idx):\n",
        "    def train(self, mode=True):\n        if mode:\n            with torch.no_grad():\n"
        "                self.head.weight.mul_(1.01)\n        return super().train(mode)\n\n"
        "    def forward(self, idx):\n",
    )
    record = run_llmcheck(source, "-k", "eval").by_check["eval"]
    assert record["status"] == "failed"
    assert "before vs after model.train(); model.eval(): outputs differ" in record["message"]
    assert "head (Linear)" in record["message"]


def test_a_submodule_that_ignores_eval_is_named(run_llmcheck):
    source = variant(
        "    def forward(self, x):\n        q, k, v",
        "    def train(self, mode=True):\n        return self  # never propagates the mode\n\n"
        "    def forward(self, x):\n        q, k, v",
    )
    record = run_llmcheck(source, "-k", "eval").by_check["eval"]
    assert record["status"] == "failed"
    assert "after model.eval() these modules still have training=True: blocks.0" in record["message"]


LSTM_LM = """
import llmcheck
import torch.nn as nn


class LSTMLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(200, 64)
        self.rnn = nn.LSTM(64, 64, num_layers=2, dropout=0.2, batch_first=True)
        self.head = nn.Linear(64, 200)

    def forward(self, idx):
        out, _ = self.rnn(self.embed(idx))
        return self.head(out)


@llmcheck.model(vocab_size=200)
def lstm():
    return LSTMLM()
"""


def test_grad_modes_may_round_differently_but_a_grad_mode_branch_fails(run_llmcheck):
    """CPU nn.LSTM runs a fused kernel without autograd: grad mode and no_grad differ by rounding
    (1.9e-8 here), which is no eval bug; a forward that computes something else without grad is."""
    record = run_llmcheck(LSTM_LM, "-k", "eval").by_check["eval"]
    assert record["status"] == "passed", record["message"]
    no_grad = record["metrics"]["comparisons"]["no_grad"]
    assert 0 < no_grad["allowed"] < 1e-4 and no_grad["max_abs_diff"] <= no_grad["allowed"]
    assert record["metrics"]["comparisons"]["repeat"]["allowed"] == 0  # repeats stay bit for bit

    branch = LSTM_LM.replace(
        "        return self.head(out)",
        "        if not torch.is_grad_enabled():\n            out = out * 1.001  # the bug\n"
        "        return self.head(out)",
    ).replace("import torch.nn as nn", "import torch\nimport torch.nn as nn")
    record = run_llmcheck(branch, "-k", "eval").by_check["eval"]
    assert record["status"] == "failed"
    assert "grad mode vs torch.no_grad: outputs differ" in record["message"]
    assert "the outputs' dtype rounding" in record["message"] and "first differing module: head" in record["message"]
