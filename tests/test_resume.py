"""resume: a run resumed from a checkpoint must match the uninterrupted one."""

from model_sources import CLEAN, variant

WITH_SCHEDULER = (
    CLEAN
    + """
@llmcheck.optimizer
def adamw_with_warmup(model):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / 3))
"""
)


def test_a_clean_model_with_dropout_and_a_scheduler_resumes_exactly(run_llmcheck):
    record = run_llmcheck(WITH_SCHEDULER, "-k", "resume").by_check["resume"]
    assert record["status"] == "passed", record["message"]
    assert "model, optimizer, scheduler and RNG" in record["message"]
    assert record["metrics"]["losses_resumed"] == record["metrics"]["losses_uninterrupted"][2:]


def test_a_step_counter_outside_the_checkpoint_fails_resume_naming_parameter_step_and_counter(run_llmcheck):
    source = variant(
        "        for block in self.blocks:\n            x = block(x)\n",
        "        if self.training:\n            self.calls += 1\n"
        "        for block in self.blocks:\n            x = block(x) * (1 + 0.01 * self.calls)\n",
    )
    source = variant(
        "self.head = nn.Linear(D, V, bias=False)",
        "self.head = nn.Linear(D, V, bias=False)\n        self.calls = 0",
        source,
    )
    record = run_llmcheck(source, "-k", "resume").by_check["resume"]
    assert record["status"] == "failed"
    message = record["message"]
    assert (
        "after resuming at step 2, parameter " in message
        and "first differs from the uninterrupted run at step 3" in message
    )
    assert "state outside the checkpoint that differs after restore: calls (2 vs 0)" in message
    assert record["metrics"]["first_divergence"]["step"] == 3


def test_a_scheduler_whose_state_dict_forgets_its_counter_fails_resume(run_llmcheck):
    source = (
        CLEAN
        + '''
class InverseDecay:
    """lr = base / n after n steps, but state_dict() forgets n."""
    def __init__(self, opt):
        self.opt, self.n = opt, 0
    def step(self):
        self.n += 1
        for g in self.opt.param_groups:
            g["lr"] = 1e-3 / self.n
    def state_dict(self):
        return {}
    def load_state_dict(self, state):
        pass

@llmcheck.optimizer
def opt(model):
    o = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return o, InverseDecay(o)
'''
    )
    record = run_llmcheck(source, "-k", "resume").by_check["resume"]
    assert record["status"] == "failed"
    # the restored optimizer still holds step 3's lr; the forgotten counter shows from step 4 on
    assert "first differs from the uninterrupted run at step 4" in record["message"]
