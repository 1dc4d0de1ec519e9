"""kill -9 during training and during saving: the last complete checkpoint resumes to the same weights."""

import os
import signal
import subprocess
import sys

import pytest
import torch
from test_trainer import assert_same_weights

from hf_distill.checkpoints import is_complete, last_complete_checkpoint

SCRIPT = os.path.join(os.path.dirname(__file__), "fault_run.py")


def run(out_dir, max_steps, mode, kill_step=-1):
    env = dict(os.environ, PYTHONPATH=os.path.dirname(__file__))
    cmd = [sys.executable, SCRIPT, str(out_dir), str(max_steps), mode, str(kill_step)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    result = run(out, 6, "none")
    assert result.returncode == 0, result.stderr[-2000:]
    return torch.load(out / "final.pt")


def resume_and_compare(out, uninterrupted):
    result = run(out, 6, "resume")
    assert result.returncode == 0, result.stderr[-2000:]
    assert_same_weights(torch.load(out / "final.pt"), uninterrupted)


def test_kill_after_a_checkpoint_resumes_to_the_same_weights(tmp_path, uninterrupted):
    result = run(tmp_path, 6, "after_checkpoint", kill_step=3)
    assert result.returncode == -signal.SIGKILL
    assert last_complete_checkpoint(str(tmp_path)).endswith("checkpoint-3")
    resume_and_compare(tmp_path, uninterrupted)


def test_kill_mid_checkpoint_never_resumes_the_partial_one(tmp_path, uninterrupted):
    result = run(tmp_path, 6, "mid_checkpoint", kill_step=4)
    assert result.returncode == -signal.SIGKILL
    partial = tmp_path / "checkpoint-4"
    assert (partial / "model.safetensors").is_file() and not is_complete(str(partial))
    assert last_complete_checkpoint(str(tmp_path)).endswith("checkpoint-3")
    resume_and_compare(tmp_path, uninterrupted)


def test_kill_during_final_save_keeps_the_previous_checkpoint(tmp_path, uninterrupted):
    result = run(tmp_path, 6, "mid_final_save")
    assert result.returncode == -signal.SIGKILL
    assert (tmp_path / "model.safetensors").read_bytes() == b"partial"
    last = last_complete_checkpoint(str(tmp_path))
    assert last.endswith("checkpoint-6")
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(last)
    assert_same_weights(reloaded.state_dict(), uninterrupted)
