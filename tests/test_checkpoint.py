"""checkpoint: state that does not survive a state_dict round trip is named."""

import torch
from model_sources import variant

from llmcheck.target.tensors import tied_groups, untied


def test_a_clean_model_with_tied_weights_passes_checkpoint(run_llmcheck):
    source = variant(
        "for p in self.parameters():", "self.head.weight = self.tok.weight\n        for p in self.parameters():"
    )
    result = run_llmcheck(source, "-k", "checkpoint and not checkpointing")
    record = result.by_check["checkpoint"]
    assert record["status"] == "passed", record["message"]
    assert "1 tied weight group(s) survive" in record["message"]
    assert record["metrics"]["formats"]["torch"]["max_abs_diff"] == 0.0


def test_a_tensor_kept_outside_parameters_and_buffers_fails_checkpoint_by_name(run_llmcheck):
    source = variant(
        "self.head = nn.Linear(D, V, bias=False)",
        "self.head = nn.Linear(D, V, bias=False)\n        self.scale = torch.rand(D) + 0.5",
    )
    source = variant("return self.head(x)", "return self.head(x * self.scale)", source)
    result = run_llmcheck(source, "-k", "checkpoint and not checkpointing")
    record = result.by_check["checkpoint"]
    assert record["status"] == "failed"
    assert "torch: outputs differ after the round trip: max |Δ| = " in record["message"]
    assert "state that did not come back (not in state_dict): scale (tensor [32]" in record["message"]
    assert "safetensors:" in record["message"]


def test_a_non_persistent_random_buffer_fails_checkpoint_by_name(run_llmcheck):
    source = variant(
        "self.head = nn.Linear(D, V, bias=False)",
        "self.head = nn.Linear(D, V, bias=False)\n"
        "        self.register_buffer('noise', torch.randn(D), persistent=False)",
    )
    source = variant("return self.head(x)", "return self.head(x + self.noise)", source)
    record = run_llmcheck(source, "-k", "checkpoint and not checkpointing").by_check["checkpoint"]
    assert record["status"] == "failed" and "noise (tensor [32]" in record["message"]


def test_untied_reports_groups_whose_storage_came_apart():
    model = torch.nn.Sequential(torch.nn.Embedding(4, 3), torch.nn.Linear(3, 4, bias=False))
    model[1].weight = model[0].weight
    groups = tied_groups(model)
    assert groups == [["0.weight", "1.weight"]]
    assert untied(model, groups) == []
    model[1].weight = torch.nn.Parameter(model[0].weight.detach().clone())
    assert untied(model, groups) == ["0.weight = 1.weight"]
