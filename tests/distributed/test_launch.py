"""The shipped CPU config through `accelerate launch`: real 2-process runs (training, teacher cache)."""

import json
import os
import subprocess
import sys

import pytest
from datasets import load_from_disk

from hf_distill.cli import main

pytestmark = pytest.mark.distributed

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def launch(*args: str) -> subprocess.CompletedProcess:
    """`accelerate launch` with the shipped 2-process CPU config; fails the test unless every process exited 0."""
    config = os.path.join(ROOT, "accelerate_configs", "cpu_2proc.yaml")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config, *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_accelerate_launch_cpu_config_trains_with_two_processes(workspace):
    tmp_path, recipe = workspace
    launch(os.path.join(ROOT, "train.py"), recipe, "--max_steps", "2", "--per_device_train_batch_size", "4")
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    # 32 training examples, 2 steps of 4 per process: 16 examples (epoch 0.5) with 2 processes, 8 with one.
    assert state["global_step"] == 2
    assert state["epoch"] == pytest.approx(0.5)
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_accelerate_launch_cpu_config_synchronises_the_two_replicas(workspace):
    """The recipe's trainer under the same launch, asserting inside the run (launch_train.py, on both ranks) a
    2-process group and identical student weights on both ranks after training."""
    tmp_path, recipe = workspace
    result = launch(os.path.join(ROOT, "tests", "scripts", "launch_train.py"), recipe, "--max_steps", "2")
    # Printed by each rank only after its checks passed.
    for rank in (0, 1):
        assert f"rank {rank} of 2: 2 steps, replicas identical" in result.stdout, result.stdout[-3000:]


def test_train_command_leaves_the_process_group(workspace):
    """The command ends a launched run as Accelerate's end_training does: without it, gloo's threads were torn down at
    interpreter exit and a finished run sometimes exited -6 ("terminate called without an active exception")."""
    _, recipe = workspace
    result = launch(os.path.join(ROOT, "tests", "scripts", "launch_cli.py"), recipe, "--max_steps", "1")
    for rank in (0, 1):
        assert f"rank {rank}: left a 2-process group, no DDP wrapper alive" in result.stdout, result.stdout[-3000:]


def test_cache_teacher_with_two_processes_equals_one(workspace):
    """Each process writes its own shards (0, 2 and 1, 3); together they are the cache one process builds."""
    tmp_path, recipe = workspace
    cache = ["--top_k", "8", "--shard_size", "10"]
    main(["cache-teacher", recipe, "--output_dir", str(tmp_path / "one"), *cache])
    result = launch("-m", "hf_distill.cli", "cache-teacher", recipe, "--output_dir", str(tmp_path / "two"), *cache)
    assert "process 0 of 2: shards [0, 2], 2 written" in result.stdout
    assert "process 1 of 2: shards [1, 3], 2 written" in result.stdout
    assert sorted(os.listdir(tmp_path / "two")) == sorted(os.listdir(tmp_path / "one"))
    assert (tmp_path / "two" / "manifest.json").read_text() == (tmp_path / "one" / "manifest.json").read_text()
    for name in sorted(os.listdir(tmp_path / "one")):
        if name.startswith("shard-"):
            two = load_from_disk(str(tmp_path / "two" / name)).to_dict()
            assert two == load_from_disk(str(tmp_path / "one" / name)).to_dict(), name
