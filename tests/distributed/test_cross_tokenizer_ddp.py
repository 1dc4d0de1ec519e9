"""Cross-tokenizer distillation under DDP (2 CPU processes over gloo): the weights of one process with the same
global batch."""

import os
import subprocess
import sys

import pytest
import torch
from testing_utils import _trainer, _weights, cross_tokenizer_recipe

pytestmark = pytest.mark.distributed

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "scripts", "cross_tokenizer_ddp.py")


@pytest.mark.parametrize("mode", ["uld", "aligned"])
def test_ddp_equals_single_process(workspace, mode):
    tmp_path, recipe = workspace
    cross = cross_tokenizer_recipe(tmp_path, recipe, mode, extra="adam_epsilon: 1.0e-6\n")
    out = tmp_path / "ddp"
    overrides = ["--max_steps", "3", "--logging_steps", "1", "--dataset_eval_split", "eval"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", SCRIPT, cross]
    cmd += ["--output_dir", str(out), "--per_device_train_batch_size", "4", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = torch.load(out / "result.pt", weights_only=False)
    assert ddp["world_size"] == 2
    single = _trainer(tmp_path, cross, output_dir=tmp_path / "single", per_device_train_batch_size=8, max_steps=3)
    single.train()
    for key, value in _weights(single).items():
        torch.testing.assert_close(ddp["weights"][key], value, rtol=0, atol=1e-5, msg=key)
    ddp_kd = [h["kd_loss"] for h in ddp["log_history"] if "kd_loss" in h]
    single_kd = [h["kd_loss"] for h in single.state.log_history if "kd_loss" in h]
    assert len(ddp_kd) == 3
    torch.testing.assert_close(torch.tensor(ddp_kd), torch.tensor(single_kd), rtol=1e-5, atol=1e-6)
