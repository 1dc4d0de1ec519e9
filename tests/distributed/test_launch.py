"""The shipped CPU config through `accelerate launch ... train.py RECIPE`: a real 2-process run, as users start it."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.distributed

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_accelerate_launch_cpu_config_trains_with_two_processes(workspace):
    tmp_path, recipe = workspace
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", os.path.join(ROOT, "accelerate_configs", "cpu_2proc.yaml"),
        os.path.join(ROOT, "train.py"), recipe, "--max_steps", "2", "--per_device_train_batch_size", "4",
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    # 32 training examples, 2 steps of 4 per process: 16 examples (epoch 0.5) with 2 processes, 8 with one.
    assert state["global_step"] == 2
    assert state["epoch"] == pytest.approx(0.5)
    assert (tmp_path / "out" / "model.safetensors").is_file()
