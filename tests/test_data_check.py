"""The data check through ``pytest --llmcheck``: an eval split that copies part of train, duplicates,
a shifted distribution and out-of-vocabulary ids each fail with their figures; clean splits pass,
and the data-reading checks skip with the reason when the model file declares no data."""

from __future__ import annotations

import pytest
from data_sources import WITH_DATA
from model_sources import CLEAN, variant

SPLITS = "TRAIN, EVAL = walk(64, seed=1), walk(32, seed=2)"


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # workers inherit it: no BLAS threads spinning on 2 cores


def test_clean_data_passes_data_training_input_pipeline_and_generation(run_llmcheck):
    result = run_llmcheck(
        WITH_DATA,
        "-k",
        "data or training or input-pipeline or generation",
        "--llmcheck-set",
        "training.steps=20",
        "--llmcheck-set",
        "input-pipeline.batches=4",
    )
    found = result.by_check
    assert {c: r["status"] for c, r in found.items()} == dict.fromkeys(
        ("data", "training", "input-pipeline", "generation"), "passed"
    ), {c: r["message"] for c, r in found.items()}
    message = found["data"]["message"]
    assert "train: 0 of 64 sequences are exact duplicates (0.0%, limit 1.0%)" in message
    assert "0 of 32 eval sequences (0.0%, limit 0.0%) duplicate training data" in message
    assert "length distribution shift train -> eval: JSD 0.0000 bits (limit 0.1)" in message
    assert "token distribution shift train -> eval: JSD 0.0" in message and "(limit 0.05; train halves: 0.0" in message
    assert "train loader" in found["input-pipeline"]["message"] and "eval loader" in found["input-pipeline"]["message"]


def test_the_data_reading_checks_skip_with_the_reason_without_data(run_llmcheck):
    found = run_llmcheck(CLEAN, "-k", "data or training or input-pipeline").by_check
    assert {c: r["status"] for c, r in found.items()} == dict.fromkeys(
        ("data", "training", "input-pipeline"), "skipped"
    )
    assert "no @llmcheck.train_data in the model file" in found["data"]["message"]
    assert "no @llmcheck.train_data or @llmcheck.eval_data" in found["input-pipeline"]["message"]


LEAK = variant(
    SPLITS,
    """TRAIN = walk(64, seed=1)
near = TRAIN[8:16].clone()
near[:, -1] = (near[:, -1] + 7) % V  # the same text with its last token changed
EVAL = torch.cat([near, TRAIN[:8], walk(16, seed=2)])  # 8 near and 8 exact copies of train""",
    WITH_DATA,
)


def test_an_eval_split_that_copies_part_of_train_fails_data_with_the_examples(run_llmcheck):
    found = run_llmcheck(LEAK, "-k", "data").by_check["data"]
    assert found["status"] == "failed"
    message = found["message"]
    assert (
        "eval split overlaps train: 16 of 32 eval sequences (50.0%, limit 0.0%) duplicate training data "
        "(8 exact, 8 near: >= 50% of their 13-grams seen in train)"
    ) in message
    assert "eval #0 ~ train #8 (95% of its 13-grams seen in train, 95% in train #8, the closest) tokens [" in message
    examples = found["metrics"]["overlap_examples"]
    assert [(e["eval_row"], e["train_row"], e["kind"]) for e in examples] == [
        (0, 8, "near"),
        (1, 9, "near"),
        (2, 10, "near"),
    ]
    assert found["metrics"]["bloom"]["bytes"] > 0


MESSY = variant(
    SPLITS,
    """TRAIN = torch.cat([walk(48, seed=1), walk(1, seed=3).repeat(16, 1)])  # one row 16 times
EVAL = walk(32, seed=2) % 16  # only ids 0-15: a different distribution
EVAL[3, 5] = V + 3  # an id past the vocabulary
MASK = torch.ones_like(EVAL)
MASK[:, 16:] = 0  # right padding: eval sequences are half as long""",
    WITH_DATA,
)
MESSY = variant(
    "    yield from EVAL.split(8)",
    "    for ids, mask in zip(EVAL.split(8), MASK.split(8)):\n        yield {'input_ids': ids, 'attention_mask': mask}",
    MESSY,
)


def test_duplicates_shift_and_out_of_vocabulary_ids_fail_data_with_their_figures(run_llmcheck):
    found = run_llmcheck(MESSY, "-k", "data").by_check["data"]
    assert found["status"] == "failed"
    message = found["message"]
    assert "train: 15 of 64 sequences are exact duplicates (23.4%, limit 1.0%), first: #49 = #48" in message
    assert "eval: 1 token id(s) outside the vocabulary [0, 64); first: id 67 in sequence #3 at position 5" in message
    assert "length distribution shift train -> eval: JSD 1.0000 bits (limit 0.1)" in message
    assert found["metrics"]["token_jsd"] > 0.05 and "token distribution shift train -> eval: JSD 0." in message
    assert found["metrics"]["eval"]["lengths"] == {"16": 32}


def test_data_hooks_that_yield_strings_or_nothing_are_contract_errors(tmp_path):
    from llmcheck.target.batches import batches
    from llmcheck.target.model import ContractError, Target, load_declarations

    path = tmp_path / "hooks_model.py"
    path.write_text(
        CLEAN + "\n\n@llmcheck.train_data\ndef lines():\n    return iter(['the text, not token ids'])\n"
        "\n\n@llmcheck.eval_data\ndef held_out():\n    return iter([])\n"
    )
    models, hooks = load_declarations(path)
    target = Target(models[0], hooks["tiny"], {})
    with pytest.raises(ContractError, match=r"@llmcheck.train_data lines yielded str as batch 0; expected a tensor"):
        list(batches(target, "train"))
    with pytest.raises(ContractError, match=r"@llmcheck.eval_data held_out yielded no batch"):
        list(batches(target, "eval"))
    assert len(list(batches(target, "train", limit=0))) == 0
