"""FSDP2 with 2 CPU processes: a sharded teacher, and sharded training equal to one process."""

import os
import subprocess
import sys

import pytest
import torch
from conftest import tiny_llama
from fsdp2_check import train
from test_trainer import assert_same_weights

pytestmark = pytest.mark.distributed

SCRIPT = os.path.join(os.path.dirname(__file__), "fsdp2_check.py")


@pytest.mark.parametrize("chunked", [False, True])
def test_fsdp2_sharded_teacher_and_student_match_one_process(tmp_path, chunked):
    """The chunked variant reads the LM head of a sharded student and teacher outside their forward."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd = [*launch, SCRIPT, str(tmp_path), *(["--chunked"] if chunked else [])]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = torch.load(tmp_path / "result.pt", weights_only=False)
    assert out["world_size"] == 2
    student, teacher = tiny_llama(seed=1, hidden=32, layers=1), tiny_llama(seed=2, hidden=48, layers=2)
    train(student, teacher.eval(), rank=0, world_size=1)
    assert_same_weights(out["weights"], student.state_dict())
