"""FSDP2 with 2 CPU processes: a sharded teacher, and sharded training equal to one process."""

import os
import subprocess
import sys

import pytest
import torch
from fsdp2_check import train
from test_trainer import assert_same_weights
from testing_utils import tiny_llama

pytestmark = pytest.mark.distributed

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "scripts", "fsdp2_check.py")


def run_fsdp2(out_dir, *flags):
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = subprocess.run([*launch, SCRIPT, str(out_dir), *flags], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = torch.load(out_dir / "result.pt", weights_only=False)
    assert out["world_size"] == 2
    return out


def one_process_weights():
    """The same 3 steps of global batch 8 in one process, without accumulation, from the plain (dense) loss."""
    student, teacher = tiny_llama(seed=1, hidden=32, layers=1), tiny_llama(seed=2, hidden=48, layers=2)
    train(student, teacher.eval(), rank=0, world_size=1)
    return student.state_dict()


@pytest.mark.parametrize("chunked", [False, True])
def test_fsdp2_sharded_teacher_and_student_match_one_process(tmp_path, chunked):
    """The chunked variant reads the LM head of a sharded student and teacher outside their forward."""
    out = run_fsdp2(tmp_path, *(["--chunked"] if chunked else []))
    assert_same_weights(out["weights"], one_process_weights())


@pytest.mark.parametrize("chunked", [False, True])
def test_fsdp2_gradient_accumulation_syncs_on_last_micro_batch_only(tmp_path, chunked):
    """2 micro-batches per process and step through DistillTrainer's own loss: inside the run, the first backward
    reduces nothing and leaves each rank its own gradients, the last one reduce-scatters their average."""
    out = run_fsdp2(tmp_path, "--accumulate", *(["--chunked"] if chunked else []))
    assert out["checked_micro_batches"] == 3 * 2
    assert_same_weights(out["weights"], one_process_weights())
