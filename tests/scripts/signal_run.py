"""A training run that sends itself a signal at a chosen step; used by test_reliability_ii.py.

python tests/scripts/signal_run.py OUT_DIR MAX_STEPS {none,resume,SIGTERM,SIGINT,twice,repeated} [SIGNAL_STEP]

`twice`: a second SIGTERM after `REPEAT_SECONDS`, as a person sends it to stop at once; `repeated`: a second one at
once, as a launcher forwards the scheduler's.

The schedule saves a checkpoint at the last step only (save_steps beyond max_steps): an earlier one comes from the
signal.
"""

import os
import signal
import sys
import time

import torch
from test_trainer import make_args
from testing_utils import pad_collator, tiny_llama, variable_length_dataset
from transformers import TrainerCallback

from hf_distill import DistillTrainer
from hf_distill.run.signals import REPEAT_SECONDS


class SendSignal(TrainerCallback):
    """Sends the signal in the middle of optimizer step `step` (after its first micro-batch), `times` times,
    `pause` seconds apart."""

    def __init__(self, signum: int, step: int, times: int, pause: float = 0.0):
        self.signum, self.step, self.times, self.pause = signum, step, times, pause

    def on_substep_end(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            for i in range(self.times):
                time.sleep(self.pause if i else 0)
                os.kill(os.getpid(), self.signum)
            self.times = 0


def main(out_dir: str, max_steps: int, mode: str, signal_step: int) -> None:
    callbacks = []
    if mode in ("SIGTERM", "SIGINT", "twice", "repeated"):
        signum = signal.SIGINT if mode == "SIGINT" else signal.SIGTERM
        times = 2 if mode in ("twice", "repeated") else 1
        callbacks.append(SendSignal(signum, signal_step, times, pause=REPEAT_SECONDS + 0.2 if mode == "twice" else 0))
    trainer = DistillTrainer(
        model=tiny_llama(seed=1, hidden=32, layers=1),
        teacher_model=tiny_llama(seed=2, hidden=48, layers=2),
        args=make_args(
            out_dir,
            max_steps=max_steps,
            per_device_train_batch_size=2,
            gradient_accumulation_steps=2,
            save_strategy="steps",
            save_steps=1000,
        ),
        train_dataset=variable_length_dataset(),
        data_collator=pad_collator,
        callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=True if mode == "resume" else None)
    torch.save(
        {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}, os.path.join(out_dir, "final.pt")
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else -1)
