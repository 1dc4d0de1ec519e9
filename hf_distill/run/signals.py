"""SIGTERM (what schedulers and preemptible clouds send) and SIGINT (Ctrl-C) end a training run cleanly: the current
optimizer step finishes, a complete checkpoint is written, and the process exits 143 or 130 with one line saying how
to resume. A second signal stops at once, unless it comes within `REPEAT_SECONDS` of the first.

Under torchrun (and `accelerate launch`, which runs it), a scheduler that signals every process of a job (as Slurm
does) reaches each worker twice: directly, and forwarded by the launcher, which also signals its workers when it is
signalled alone. Such a repeat arrives within milliseconds, so it is taken as the same request. The launcher kills
its workers 30 seconds after forwarding a signal: a step and a checkpoint must fit in that time.
"""

import logging
import os
import signal
import sys
import threading
import time

import torch
from transformers import TrainerCallback

from .checkpoints import last_complete_checkpoint

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# A signal this soon after the first is the same request, forwarded (see the module docstring); a person who sends it
# again to stop at once does so later.
REPEAT_SECONDS = 1.0


class StopOnSignal(TrainerCallback):
    """Around `Trainer.train` (a context manager): records a stop signal, and at the end of the optimizer step asks
    for a checkpoint and the end of training; `exit_if_signalled` then ends the process.

    Processes stop at the same step: the flag is reduced over them at each step end, since a signal reaches the
    processes of a launched run at different moments.
    """

    def __init__(self, trainer):
        self.trainer = trainer
        self.received: int | None = None
        self._received_at = 0.0
        self.stopped_at: int | None = None
        self._previous = {}

    def __enter__(self):
        # Python only lets the main thread install handlers; a run in another thread keeps the default behaviour.
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        self.trainer.add_callback(self)
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
        self.trainer.remove_callback(self)
        return False

    def _handle(self, signum, frame):
        if self.received is not None:
            if time.monotonic() - self._received_at < REPEAT_SECONDS:
                return
            # The second signal: stop now, as the signal's default action does.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received, self._received_at = signum, time.monotonic()
        logger.warning(
            f"{signal.Signals(signum).name} received: finishing this step and saving a checkpoint (send it again to "
            "stop at once)"
        )

    def on_step_end(self, args, state, control, **kwargs):
        accelerator = self.trainer.accelerator
        flag = torch.tensor(float(self.received or 0), device=accelerator.device)
        if accelerator.num_processes > 1:
            flag = accelerator.reduce(flag, reduction="max")
        if flag.item() == 0:
            return
        if self.received is None:
            self._received_at = time.monotonic()  # another process's signal: its forwarded copy may follow
        self.received = int(flag.item())
        self.stopped_at = state.global_step
        control.should_save = True
        control.should_training_stop = True

    def exit_if_signalled(self) -> None:
        """After training: if a stop signal came, say how to resume and exit with 128 + its number (143 for SIGTERM,
        130 for SIGINT), as a process ended by it would."""
        if self.received is None:
            return
        if self.trainer.is_world_process_zero():
            name = signal.Signals(self.received).name
            checkpoint = last_complete_checkpoint(self.trainer.args.output_dir)
            where = f"after step {self.stopped_at}" if self.stopped_at is not None else "after the last step"
            then = f"{checkpoint} is complete: rerun the same command to resume from it"
            if checkpoint is None:
                then = "no complete checkpoint: rerun the same command to start again"
            print(f"hf-distill: stopped by {name} {where}; {then}", file=sys.stderr, flush=True)
        sys.exit(128 + self.received)
