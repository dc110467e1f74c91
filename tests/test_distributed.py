"""The distributed check through ``pytest --llmcheck``: DDP on 2 gloo ranks against one process on
the whole batch, unused parameters, rank-dependent lines, a collective one rank never reaches;
and the documented ``torchrun`` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import psutil
from model_sources import CLEAN, variant

ONLY = ("-k", "distributed")
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "tiny_gpt.py"
LOOP = "        for block in self.blocks:\n"
RANK_1 = "        if torch.distributed.is_initialized() and torch.distributed.get_rank() == 1:\n"


def _processes_mentioning(text: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if text in " ".join(proc.info["cmdline"] or []) and proc.pid != os.getpid():
            found.append(proc)
    return found


def test_ddp_on_two_gloo_ranks_equals_one_process_on_the_whole_batch(run_llmcheck):
    r = run_llmcheck(CLEAN, *ONLY).by_check["distributed"]
    assert r["status"] == "passed", r["message"]
    m = r["metrics"]
    assert (m["world_size"], m["backend"], m["compared_ranks"], m["dtype"]) == (2, "gloo", 2, "float32")
    assert m["parameters"] == len(m["grad"]) == len(m["param"]) == 23
    assert max(d for d, _ in m["grad"].values()) < 1e-6 and max(d for d, _ in m["param"].values()) < 1e-6
    assert m["unused"] == {} and m["lines"]["divergent"] == [] and m["lines"]["same_on_all"] > 5
    assert "DDP on 2 gloo ranks (2 rows each) equals one process on the 4-row batch" in r["message"]
    assert set(r["artifacts"]) == {"rank0.log", "rank1.log"}


# The example and its fine-tuning set-up pass: asserted on tests/test_contract.py's run of the
# whole default suite on the example.


def test_a_forward_that_depends_on_the_rank_fails_naming_the_line_and_the_parameter(run_llmcheck):
    source = variant(LOOP, RANK_1 + "            x = x * 1.5\n" + LOOP)
    r = run_llmcheck(source, *ONLY).by_check["distributed"]
    assert r["status"] == "failed", r["message"]
    assert "model.py:39 `x = x * 1.5` ran on rank(s) 1 only" in r["message"]
    assert "gradient of " in r["message"] and "differs from one process on the whole batch: max |Δ| = " in r["message"]
    assert [x["where"] for x in r["metrics"]["lines"]["divergent"]] == ["model.py:39"]


def test_a_branch_on_the_data_is_no_rank_dependence_and_is_named_in_a_note(run_llmcheck):
    # rank 0's rows and rank 1's rows take different sides of this branch; on the same rows they agree
    branch = "        if int(idx[0, 0]) % 2 == 0:\n            x = x * 1.0\n"
    r = run_llmcheck(variant(LOOP, branch + LOOP), *ONLY).by_check["distributed"]
    assert r["status"] == "passed", r["message"]
    assert r["metrics"]["lines"]["divergent"] == []
    assert [x["where"] for x in r["metrics"]["shard_lines"]["divergent"]] == ["model.py:39"]
    assert "so they follow the data, not the rank: model.py:39 on rank(s) " in r["message"]


def test_a_parameter_left_unused_fails_with_its_name(run_llmcheck):
    source = variant(
        "        self.head = nn.Linear(D, V, bias=False)\n",
        "        self.head = nn.Linear(D, V, bias=False)\n        self.spare = nn.Linear(D, D)\n",
    )
    r = run_llmcheck(source, *ONLY).by_check["distributed"]
    assert r["status"] == "failed", r["message"]
    assert (
        "parameters spare.weight, spare.bias received no gradient on rank(s) 0, 1: DDP would flag them as unused"
        in r["message"]
    )
    assert r["metrics"]["unused"] == {"spare.weight": [0, 1], "spare.bias": [0, 1]}


def test_a_rank_that_skips_a_collective_is_caught_with_each_ranks_stack_and_no_process_left(run_llmcheck, pytester):
    source = variant(LOOP, RANK_1.replace("== 1", "== 0") + "            torch.distributed.barrier()\n" + LOOP)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    r = run_llmcheck(source, *ONLY, "--llmcheck-set", "distributed.collective_timeout=5").by_check["distributed"]
    assert r["status"] == "failed", r["message"]
    message = r["message"]
    assert message.startswith(
        "collective hang: the DDP step on 2 gloo ranks did not finish within "
        "collective_timeout 5 s after every rank joined; rank 0 stuck at model.py:39 in forward "
        "(phase forward); rank 1 stuck at "
    )
    assert "(phase backward)" in message and "every rank was killed" in message
    for rank in (0, 1):
        assert f"--- rank {rank} pid " in message
    assert 'model.py", line 39 in forward' in message and "in barrier" in message
    assert [s["rank"] for s in r["metrics"]["stuck"]] == [0, 1]
    assert not [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert not _processes_mentioning(str(pytester.path / "model.py"))


def test_nccl_is_chosen_only_with_one_gpu_per_rank():
    from llmcheck.checks.distributed.rank import choose_backend

    assert choose_backend("cpu", 0, 2) == ("gloo", "")
    assert choose_backend("cuda", 8, 8) == ("nccl", "")
    why = "NCCL needs one CUDA device per rank: world_size 2, 1 CUDA device(s) visible"
    assert choose_backend("cuda:0", 1, 2) == (None, why)


def test_on_cuda_without_two_gpus_the_check_skips_with_the_reason(run_llmcheck):
    r = run_llmcheck(CLEAN, *ONLY, "--llmcheck-set", "device=cuda").by_check["distributed"]
    assert r["status"] == "skipped"
    assert r["message"].startswith("NCCL needs one CUDA device per rank: world_size 2, ")


def test_a_model_without_trainable_parameters_skips_with_the_reason(run_llmcheck):
    source = variant("    return TinyLM()", "    return TinyLM().requires_grad_(False)")
    r = run_llmcheck(source, *ONLY).by_check["distributed"]
    assert r["status"] == "skipped" and "no trainable parameters" in r["message"]


def test_the_documented_torchrun_command_runs_the_check_on_two_cpu_ranks(tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "llmcheck.ddp_rank",
            str(EXAMPLE),
            "--out",
            str(out),
        ],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "llmcheck distributed: PASSED: DDP on 2 gloo ranks (2 rows each) equals one process" in proc.stdout
    assert {p.name for p in out.iterdir()} >= {"rank0.safetensors", "rank1.safetensors", "gathered.json", "report.json"}


def test_a_forward_that_raises_on_one_rank_only_fails_naming_that_rank_and_line(run_llmcheck, pytester):
    source = variant(LOOP, RANK_1 + "            raise RuntimeError('boom on rank 1')\n" + LOOP)
    r = run_llmcheck(source, *ONLY).by_check["distributed"]
    assert r["status"] == "failed", r["message"]
    assert r["message"].startswith(
        "rank 1 failed first: exited with exit status 1 in phase forward: forward of tiny "
        "raised RuntimeError: boom on rank 1 (at model.py:39 in forward); rank 0 "
    )
    assert not _processes_mentioning(str(pytester.path / "model.py"))


def test_the_tolerance_follows_the_dtype_and_the_worst_parameter_is_named():
    from llmcheck.checks.distributed.check import judge

    metrics = {
        "outcome": "finished",
        "world_size": 2,
        "backend": "gloo",
        "per_rank_batch": 2,
        "parameters": 2,
        "grad": {"a.weight": [1e-3, 0.5], "b.bias": [1e-9, 0.1]},
        "param": {"a.weight": [0.0, 1.0], "b.bias": [0.0, 1.0]},
        "unused": {},
        "grad_presence_differs": {},
        "lines": {"same_on_all": 3, "divergent": []},
        "shard_lines": {"same_on_all": 3, "divergent": []},
    }
    p = SimpleNamespace(rtol=0.0, atol=0.0)
    assert judge({**metrics, "dtype": "bfloat16"}, p).status == "passed"
    verdict = judge({**metrics, "dtype": "float32"}, p)
    assert verdict.status == "failed"
    assert verdict.message == (
        "DDP on 2 gloo ranks: gradient of a.weight differs from one process on the whole batch: "
        "max |Δ| = 0.001 > 1e-07 + 1e-05 × max |ref| 0.5 = 5.1e-06"
    )
    assert judge({**metrics, "dtype": "float32"}, SimpleNamespace(rtol=0.01, atol=0.0)).status == "passed"


def test_a_rank_that_lost_its_peer_is_never_blamed_first_whatever_the_exit_times():
    from llmcheck.checks.distributed.launch import _blame_causes

    lost = "RuntimeError: [../gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:49901"

    def failed(first_by_time: int) -> list[dict]:
        rows = [
            {"rank": 0, "first": first_by_time == 0, "peer_lost": True, "error": lost},
            {"rank": 1, "first": first_by_time == 1, "peer_lost": False, "error": "RuntimeError: boom on rank 1"},
        ]
        _blame_causes(rows)
        return rows

    for by_time in (0, 1):  # the peer noticed first (seen under load in CI), or the cause exited first
        rows = failed(by_time)
        assert [f["rank"] for f in rows if f["first"]] == [1] and all("peer_lost" not in f for f in rows)
    both_lost = [{"rank": r, "first": r == 0, "peer_lost": True, "error": lost} for r in (0, 1)]
    _blame_causes(both_lost)  # nothing better known: the exit times stand
    assert [f["rank"] for f in both_lost if f["first"]] == [0]
