"""kill -9 during training and during saving: the last complete checkpoint resumes to the same weights."""

import os
import signal
import subprocess
import sys

import pytest
import torch
from test_trainer import assert_same_weights, make_args
from testing_utils import SCRIPTS, TESTS, pad_collator, tiny_llama, variable_length_dataset
from transformers import TrainerCallback

from hf_distill import DistillTrainer
from hf_distill.run.checkpoints import is_complete, last_complete_checkpoint, mark_complete, rotate_checkpoints

SCRIPT = os.path.join(SCRIPTS, "fault_run.py")


def run(out_dir, max_steps, mode, kill_step=-1, save_total_limit=None):
    # The inherited PYTHONPATH first: the library under test, not an installed copy, must be the one imported.
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), TESTS) if p)
    env = dict(os.environ, PYTHONPATH=path)
    cmd = [sys.executable, SCRIPT, str(out_dir), str(max_steps), mode, str(kill_step)]
    if save_total_limit is not None:
        cmd.append(str(save_total_limit))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    result = run(out, 6, "none")
    assert result.returncode == 0, result.stderr[-2000:]
    return torch.load(out / "final.pt")


def resume_and_compare(out, uninterrupted, save_total_limit=None):
    result = run(out, 6, "resume", save_total_limit=save_total_limit)
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


def checkpoint_names(out):
    return sorted(p.name for p in out.glob("checkpoint-*"))


def test_kill_before_the_marker_keeps_the_previous_checkpoint_under_save_total_limit_1(tmp_path, uninterrupted):
    # Checkpoint-4's files are all written, its marker is not: rotation must not have deleted checkpoint-3 yet.
    result = run(tmp_path, 6, "before_marker", kill_step=4, save_total_limit=1)
    assert result.returncode == -signal.SIGKILL
    assert checkpoint_names(tmp_path) == ["checkpoint-3", "checkpoint-4"]
    assert (tmp_path / "checkpoint-4" / "trainer_state.json").is_file() and not is_complete(
        str(tmp_path / "checkpoint-4")
    )
    assert last_complete_checkpoint(str(tmp_path)).endswith("checkpoint-3")
    resume_and_compare(tmp_path, uninterrupted, save_total_limit=1)
    assert checkpoint_names(tmp_path) == ["checkpoint-6"]


def test_save_total_limit_keeps_the_newest_complete_checkpoints(tmp_path):
    result = run(tmp_path, 4, "none", save_total_limit=2)
    assert result.returncode == 0, result.stderr[-2000:]
    assert checkpoint_names(tmp_path) == ["checkpoint-3", "checkpoint-4"]
    assert all(is_complete(str(tmp_path / name)) for name in checkpoint_names(tmp_path))


def test_rotation_counts_complete_checkpoints_and_spares_the_newest_and_the_best(tmp_path):
    for step in range(1, 7):
        (tmp_path / f"checkpoint-{step}").mkdir()
    for step in (1, 3, 4, 5):
        mark_complete(str(tmp_path / f"checkpoint-{step}"), step)
    # 2 is a crash's partial leftover, 6 the partial of a later step of an earlier run that this one will overwrite.
    rotate_checkpoints(str(tmp_path), 2, str(tmp_path / "checkpoint-5"), best=str(tmp_path / "checkpoint-1"))
    assert checkpoint_names(tmp_path) == ["checkpoint-1", "checkpoint-5", "checkpoint-6"]
    rotate_checkpoints(str(tmp_path), 1, str(tmp_path / "checkpoint-5"), best=None)
    assert checkpoint_names(tmp_path) == ["checkpoint-5", "checkpoint-6"]


def test_rotation_in_training_keeps_the_best_and_the_newest_checkpoint(tmp_path):
    seen = []

    class Checkpoints(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            names = checkpoint_names(tmp_path)
            seen.append((state.global_step, names, os.path.basename(state.best_model_checkpoint)))
            assert all(is_complete(str(tmp_path / name)) for name in names)

    trainer = DistillTrainer(
        model=tiny_llama(seed=1, hidden=32, layers=1),
        teacher_model=tiny_llama(seed=2, hidden=48, layers=2),
        args=make_args(
            tmp_path,
            max_steps=5,
            per_device_train_batch_size=2,
            learning_rate=3e-2,  # large enough that some evaluation is worse than an earlier one
            eval_strategy="steps",
            eval_steps=1,
            save_strategy="steps",
            save_steps=1,
            save_total_limit=1,
            load_best_model_at_end=True,
        ),
        train_dataset=variable_length_dataset(),
        eval_dataset=variable_length_dataset(n=8, seed=1),
        data_collator=pad_collator,
        callbacks=[Checkpoints()],
    )
    trainer.train()
    assert [step for step, _, _ in seen] == [1, 2, 3, 4, 5]
    for step, names, best in seen:
        assert names == sorted({f"checkpoint-{step}", best}), (step, names, best)
    assert any(best != f"checkpoint-{step}" for step, _, best in seen), "the best was always the newest: no test"


def test_resuming_from_a_checkpoint_at_max_steps_trains_no_further_step(tmp_path):
    """A run killed after its last checkpoint (in the final evaluation or save) resumes there: Trainer alone would
    train one step past max_steps (it checks max_steps only after a step), which a constant learning rate makes
    visible in the weights."""

    def trainer():
        return DistillTrainer(
            model=tiny_llama(seed=1, hidden=32, layers=1),
            teacher_model=tiny_llama(seed=2, hidden=48, layers=2),
            args=make_args(
                tmp_path, max_steps=2, per_device_train_batch_size=2, save_strategy="steps", save_steps=2,
                lr_scheduler_type="constant",
            ),
            train_dataset=variable_length_dataset(),
            data_collator=pad_collator,
        )  # fmt: skip

    finished = trainer()
    finished.train()
    resumed = trainer()
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 2
    assert_same_weights(resumed.model.state_dict(), finished.model.state_dict(), atol=0)
    assert checkpoint_names(tmp_path) == ["checkpoint-2"]
