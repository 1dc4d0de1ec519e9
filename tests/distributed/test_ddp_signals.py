"""SIGTERM under 2 DDP processes (torchrun, gloo): every rank finishes the same step, one complete checkpoint is
written, the workers exit 143 with one line saying how to resume, and the same command run again ends at the weights
of an uninterrupted 2-process run."""

import os
import subprocess
import sys

import pytest
import torch
from test_trainer import assert_same_weights

from hf_distill.run.checkpoints import damage, is_complete
from hf_distill.run.lock import LOCK_NAME

pytestmark = pytest.mark.distributed

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "scripts", "ddp_signal_run.py")
# Two micro-batches per optimizer step: the signal comes between them, in the middle of step 3 of 5.
OPTIONS = ["--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2", "--max_steps", "5"]
OPTIONS += ["--save_steps", "1000"]  # no checkpoint of the schedule before the last step: step 3's is the signal's


def launch(out_dir, mode):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", SCRIPT, mode, "3"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # A session of its own: the launcher and its workers are all that a signal test may reach.
    return subprocess.run(
        [*cmd, str(out_dir), *OPTIONS], capture_output=True, text=True, timeout=300, env=env, start_new_session=True
    )


def exit_codes(out_dir):
    return [(out_dir / f"exit-{rank}.txt").read_text() for rank in (0, 1)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    result = launch(out, "none")
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(out / "final.pt")


@pytest.mark.parametrize("mode", ["rank1", "all"])
def test_sigterm_under_two_processes_saves_one_checkpoint_and_resumes_to_the_same_weights(
    tmp_path, uninterrupted, mode
):
    """`rank1`: one worker alone is signalled; the flag is reduced at the step's end, so both stop after step 3.
    `all`: the launcher and both workers are signalled, and the launcher forwards it again: each worker takes the
    repeat as the same request, not as a second signal that would stop it at once."""
    result = launch(tmp_path, mode)
    assert result.returncode != 0  # torchrun reports its workers' 143 (or the signal it got) as a failure
    assert exit_codes(tmp_path) == ["143", "143"], result.stderr[-3000:]
    checkpoint = tmp_path / "checkpoint-3"
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-3"]
    assert is_complete(str(checkpoint)) and damage(str(checkpoint)) is None
    assert (checkpoint / "rng_state_0.pth").is_file() and (checkpoint / "rng_state_1.pth").is_file()
    lines = [line for line in result.stderr.splitlines() if line.startswith("hf-distill:")]
    assert lines == [
        f"hf-distill: stopped by SIGTERM after step 3; {checkpoint} is complete: rerun the same command to resume "
        "from it"
    ]
    assert not (tmp_path / LOCK_NAME).exists()

    result = launch(tmp_path, mode)
    assert result.returncode == 0, result.stderr[-3000:]
    assert exit_codes(tmp_path) == ["0", "0"]
    assert_same_weights(torch.load(tmp_path / "final.pt"), uninterrupted)
