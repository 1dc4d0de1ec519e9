"""DDP with 2 CPU processes over gloo: the same weights as one process with the same global batch."""

import csv
import math
import os
import subprocess
import sys

import pytest
import torch
from ddp_train import EVAL_EXAMPLES, build_trainer, parse_args
from test_trainer import assert_same_weights, train, weights

from hf_distill.run.checkpoints import is_complete

pytestmark = pytest.mark.distributed

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "scripts", "ddp_train.py")


def run_two_processes(out_dir, *args, timeout=300):
    """torchrun forms a real gloo group on CPU (`accelerate launch --cpu` does not: each process trains alone)."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        SCRIPT,
        str(out_dir),
        *args,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    out = torch.load(os.path.join(out_dir, "result.pt"), weights_only=False)
    assert out["world_size"] == 2
    return out


def test_ddp_equals_single_process(tmp_path):
    ddp = run_two_processes(tmp_path / "ddp", "--per_device_train_batch_size", "4")
    whole = train(tmp_path / "whole", per_device_train_batch_size=8, gradient_accumulation_steps=1)
    split = train(tmp_path / "split", per_device_train_batch_size=2, gradient_accumulation_steps=4)
    assert_same_weights(ddp["weights"], weights(whole))
    assert_same_weights(ddp["weights"], weights(split))
    ddp_losses = [h["loss"] for h in ddp["log_history"] if "loss" in h]
    single_losses = [h["loss"] for h in whole.state.log_history if "loss" in h]
    torch.testing.assert_close(torch.tensor(ddp_losses), torch.tensor(single_losses), rtol=1e-5, atol=1e-6)


def test_on_policy_ddp_equals_single_process(tmp_path):
    """Greedy on-policy steps: each process completes its own prompts, and the global count of generated tokens
    normalises the loss, so 2 x 4 rows reach the weights of 1 x 8 (and the same logged losses)."""
    ddp = run_two_processes(tmp_path / "ddp", "--on_policy", "--per_device_train_batch_size", "4")
    single = build_trainer(parse_args([str(tmp_path / "single"), "--on_policy", "--per_device_train_batch_size", "8"]))
    single.train()
    assert_same_weights(ddp["weights"], weights(single))
    ddp_logs = [(h["loss"], h["completion_length"]) for h in ddp["log_history"] if "loss" in h]
    single_logs = [(h["loss"], h["completion_length"]) for h in single.state.log_history if "loss" in h]
    assert len(ddp_logs) == 3 and all(h["on_policy_fraction"] == 1.0 for h in ddp["log_history"] if "loss" in h)
    torch.testing.assert_close(torch.tensor(ddp_logs), torch.tensor(single_logs), rtol=1e-5, atol=1e-6)


def test_ddp_with_gradient_accumulation(tmp_path):
    ddp = run_two_processes(
        tmp_path / "ddp", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2"
    )
    whole = train(tmp_path / "whole", per_device_train_batch_size=8, gradient_accumulation_steps=1)
    assert_same_weights(ddp["weights"], weights(whole))


def test_rank_without_valid_tokens_neither_hangs_nor_nans(tmp_path):
    out = run_two_processes(
        tmp_path / "ddp", "--per_device_train_batch_size", "1", "--max_steps", "8", "--half_masked", timeout=240
    )
    losses = [h["loss"] for h in out["log_history"] if "loss" in h]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert all(torch.isfinite(v).all() for v in out["weights"].values())


def test_checkpoint_written_by_two_processes_resumes_under_two(tmp_path):
    full = run_two_processes(tmp_path / "full", "--max_steps", "6", "--per_device_train_batch_size", "2")
    run_two_processes(tmp_path / "cut", "--max_steps", "6", "--per_device_train_batch_size", "2", "--save_steps", "3")
    checkpoint = tmp_path / "cut" / "checkpoint-3"
    assert checkpoint.is_dir()
    resumed = run_two_processes(
        tmp_path / "cut",
        "--max_steps", "6", "--per_device_train_batch_size", "2", "--save_steps", "3",
        "--resume_from_checkpoint", str(checkpoint),
    )  # fmt: skip
    assert_same_weights(full["weights"], resumed["weights"])
    assert [h["step"] for h in resumed["log_history"] if "loss" in h] == [1, 2, 3, 4, 5, 6]


def test_two_processes_rotate_only_complete_checkpoints(tmp_path):
    """save_total_limit under 2 processes, with the rotation that waits for both processes and the marker: a save
    every step keeps exactly the two newest checkpoints, both complete."""
    args = ["--max_steps", "6", "--per_device_train_batch_size", "2", "--save_steps", "1", "--save_total_limit", "2"]
    run_two_processes(tmp_path / "run", *args)
    kept = sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith("checkpoint-"))
    assert kept == ["checkpoint-5", "checkpoint-6"]
    assert all(is_complete(str(tmp_path / "run" / name)) for name in kept)


def test_gradients_sync_only_on_the_last_micro_batch(tmp_path):
    plain = run_two_processes(tmp_path / "a", "--per_device_train_batch_size", "2", "--count_syncs")
    accumulated = run_two_processes(
        tmp_path / "b", "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "2", "--count_syncs"
    )
    assert plain["syncs"] > 0
    # Twice the micro-batches, the same number of all-reduces: no sync inside an accumulation step.
    assert accumulated["syncs"] == plain["syncs"]
    assert_same_weights(plain["weights"], accumulated["weights"])


def test_ddp_evaluation_with_an_uneven_last_batch_equals_single_process(tmp_path):
    """6 examples at 4 per process: the second process's batch is padded with 2 duplicates, which must not count.

    Metrics and samples.csv (ids named by dataset index, values per example) equal one process evaluating alone."""
    ddp = run_two_processes(tmp_path / "ddp", "--evaluate")
    single = build_trainer(parse_args([str(tmp_path / "single"), "--evaluate"]))
    assert single.accelerator.num_processes == 1
    metrics = single.evaluate()
    for key in ("eval_loss", "eval_ce_loss", "eval_kd_loss", "eval_teacher_agreement"):
        assert ddp["metrics"][key] == pytest.approx(metrics[key], rel=0, abs=1e-6), key

    def samples(run):
        with open(tmp_path / run / "samples.csv", newline="") as f:
            return list(csv.DictReader(f))

    ddp_rows, single_rows = samples("ddp"), samples("single")
    assert [r["id"] for r in ddp_rows] == [r["id"] for r in single_rows] == [str(i) for i in range(EVAL_EXAMPLES)]
    for ddp_row, single_row in zip(ddp_rows, single_rows):
        assert ddp_row["tokens"] == single_row["tokens"]
        for column in ("ce_loss", "kd_loss", "teacher_agreement"):
            assert float(ddp_row[column]) == pytest.approx(float(single_row[column]), rel=0, abs=1e-6), column
