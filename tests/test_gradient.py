"""gradient: every trainable parameter must get a finite, non-zero gradient; init loss ~ ln(V)."""

from model_sources import CLEAN, variant


def test_a_clean_model_passes_gradient_with_a_norm_table(run_llmcheck):
    record = run_llmcheck(CLEAN, "-k", "gradient").by_check["gradient"]
    assert record["status"] == "passed", record["message"]
    assert "loss at init" in record["message"] and "vs ln(vocab) = 4.159" in record["message"]
    norms = record["metrics"]["grad_norms"]
    assert "head.weight" in norms and all(v > 0 for v in norms.values())


def test_a_dead_parameter_fails_gradient_health_by_name(run_llmcheck):
    source = variant(
        "self.head = nn.Linear(D, V, bias=False)",
        "self.head = nn.Linear(D, V, bias=False)\n        self.adapter = nn.Linear(D, D)",
    )
    record = run_llmcheck(source, "-k", "gradient").by_check["gradient"]
    assert record["status"] == "failed"
    assert (
        "parameter adapter.weight received no gradient; parameter adapter.bias received no gradient"
        in record["message"]
    )


def test_a_detached_branch_starves_the_parameters_before_it(run_llmcheck):
    source = variant("            x = block(x)\n", "            x = block(x.detach())\n")
    record = run_llmcheck(source, "-k", "gradient").by_check["gradient"]
    assert record["status"] == "failed"
    assert "parameter tok.weight received no gradient" in record["message"]


def test_a_nan_gradient_is_named_with_the_forward_line_that_made_it(run_llmcheck):
    source = variant("return self.head(x)", "return self.head(x) + 0 * torch.sqrt(x - x).sum()")
    record = run_llmcheck(source, "-k", "gradient").by_check["gradient"]
    assert record["status"] == "failed"
    assert "non-finite gradient value(s)" in record["message"]
    assert "anomaly mode: Function 'SqrtBackward0' returned nan values" in record["message"]
    assert "model.py" in record["message"] and "in forward" in record["message"]


def test_badly_scaled_initialisation_fails_the_init_loss_check(run_llmcheck):
    source = variant("nn.init.normal_(p, std=0.02)", "nn.init.normal_(p, std=1.0)")
    record = run_llmcheck(source, "-k", "gradient").by_check["gradient"]
    assert record["status"] == "failed"
    assert "vs ln(vocab) = 4.159" in record["message"] and "limit 25%" in record["message"]


def test_training_that_cannot_lower_the_loss_fails_the_overfit_check_with_numbers(run_llmcheck):
    result = run_llmcheck(CLEAN, "-k", "gradient", "--llmcheck-set", "gradient.overfit_lr=0")
    message = result.by_check["gradient"]["message"]
    assert result.by_check["gradient"]["status"] == "failed"
    assert "overfitting one batch: loss 4.1" in message and "in 50 steps (0% drop, need >= 30%)" in message
