"""A training process that a test kills with SIGKILL at a chosen point; used by test_faults.py.

python tests/scripts/fault_run.py OUT_DIR MAX_STEPS {none,after_checkpoint,mid_checkpoint,before_marker,mid_final_save}
    [KILL_STEP] [SAVE_TOTAL_LIMIT]
"""

import os
import signal
import sys

import torch
from test_trainer import make_args
from testing_utils import pad_collator, tiny_llama, variable_length_dataset

import hf_distill.run.checkpoints
from hf_distill import DistillTrainer


def kill_self():
    os.kill(os.getpid(), signal.SIGKILL)


def main(out_dir: str, max_steps: int, mode: str, kill_step: int, save_total_limit: int | None) -> None:
    trainer = DistillTrainer(
        model=tiny_llama(seed=1, hidden=32, layers=1),
        teacher_model=tiny_llama(seed=2, hidden=48, layers=2),
        args=make_args(
            out_dir,
            max_steps=max_steps,
            per_device_train_batch_size=2,
            save_strategy="steps",
            save_steps=1,
            save_total_limit=save_total_limit,
        ),
        train_dataset=variable_length_dataset(),
        data_collator=pad_collator,
    )
    save_checkpoint, save_optimizer, save_model = (
        trainer._save_checkpoint,
        trainer._save_optimizer_and_scheduler,
        trainer.save_model,
    )
    if mode == "after_checkpoint":

        def checkpoint_then_die(*args, **kwargs):
            save_checkpoint(*args, **kwargs)
            if trainer.state.global_step == kill_step:
                kill_self()

        trainer._save_checkpoint = checkpoint_then_die
    elif mode == "mid_checkpoint":
        # Model weights are on disk, optimizer state is not: the most dangerous moment to die.
        def die_before_optimizer(*args, **kwargs):
            if trainer.state.global_step == kill_step:
                kill_self()
            save_optimizer(*args, **kwargs)

        trainer._save_optimizer_and_scheduler = die_before_optimizer
    elif mode == "before_marker":
        # Every file of the checkpoint is written, the marker is not: Trainer's own rotation has run by now.
        mark_complete = hf_distill.run.checkpoints.mark_complete

        def die_before_marker(checkpoint_dir, step):
            if step == kill_step:
                kill_self()
            mark_complete(checkpoint_dir, step)

        hf_distill.run.checkpoints.mark_complete = die_before_marker
    elif mode == "mid_final_save":

        def die_in_final_save(output_dir=None, *args, **kwargs):
            if output_dir == out_dir:
                with open(os.path.join(out_dir, "model.safetensors"), "wb") as f:
                    f.write(b"partial")
                kill_self()
            save_model(output_dir, *args, **kwargs)

        trainer.save_model = die_in_final_save
    trainer.train(resume_from_checkpoint=True if mode == "resume" else None)
    trainer.save_model(out_dir)
    torch.save(
        {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}, os.path.join(out_dir, "final.pt")
    )


if __name__ == "__main__":
    main(
        sys.argv[1],
        int(sys.argv[2]),
        sys.argv[3],
        int(sys.argv[4]) if len(sys.argv) > 4 else -1,
        int(sys.argv[5]) if len(sys.argv) > 5 else None,
    )
