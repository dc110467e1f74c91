"""llmcheck: a pytest plugin that puts a PyTorch language model through production checks.

Model files use the decorators; third-party checks use `Check`, `Param`, `Verdict` and `Skip`,
receive a `Context` and their `Params` in ``measure(ctx, p)``, and register under the
``llmcheck.checks`` entry-point group (docs/writing-a-check.md). Everything else is private.
"""

from llmcheck import distill  # llmcheck.distill.loss; imports torch only when called
from llmcheck.context import Context, Params
from llmcheck.declare import compressed, eval_data, inputs, loss, model, optimizer, train_data
from llmcheck.registry import Check, Param
from llmcheck.results import LlmcheckAdvisory, Skip, Verdict

__version__ = "0.1.0"
__all__ = [
    "model",
    "inputs",
    "loss",
    "eval_data",
    "train_data",
    "optimizer",
    "compressed",
    "Check",
    "Param",
    "Verdict",
    "Skip",
    "Context",
    "Params",
    "LlmcheckAdvisory",
    "distill",
]
