"""ddp_train.py's 2-process run, with SIGTERM sent in the middle of an optimizer step; used by
tests/distributed/test_ddp_signals.py.

torchrun --nproc_per_node 2 tests/scripts/ddp_signal_run.py {none,rank1,all} STEP OUT_DIR [ddp_train.py options]

`rank1`: rank 1 alone receives SIGTERM. `all`: every process, the launcher included, receives it, as from a scheduler
that preempts a job (Slurm signals every process of it); the launcher forwards it to the workers once more. `none`:
no signal. Like `hf-distill train`, the run resumes from the last complete checkpoint in OUT_DIR if there is one.
Each rank writes its exit status to OUT_DIR/exit-<rank>.txt; rank 0 writes the final weights to OUT_DIR/final.pt.
"""

import os
import signal
import sys

import torch
import torch.distributed as dist
from ddp_train import build_trainer, parse_args
from transformers import TrainerCallback

from hf_distill.run.checkpoints import last_complete_checkpoint
from hf_distill.run.process_group import leave_process_group


class SendSignal(TrainerCallback):
    """SIGTERM after the first micro-batch of optimizer step `step`, before the optimizer step."""

    def __init__(self, mode: str, step: int):
        self.mode, self.step, self.sent = mode, step, False

    def on_substep_end(self, args, state, control, **kwargs):
        if self.sent or state.global_step + 1 != self.step:
            return
        self.sent = True
        if self.mode == "rank1" and dist.get_rank() == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        elif self.mode == "all" and dist.get_rank() == 0:
            for pid in (os.getppid(), *map(int, os.environ["SIGNAL_PIDS"].split(","))):
                os.kill(pid, signal.SIGTERM)


def main() -> None:
    mode, step = sys.argv[1], int(sys.argv[2])
    opts = parse_args(sys.argv[3:])
    trainer = build_trainer(opts)
    trainer.add_callback(SendSignal(mode, step))
    # The trap this guards against: two processes that each train alone also finish without an error.
    assert dist.is_initialized() and dist.get_world_size() == 2, "no 2-process group was formed"
    pids = [None, None]
    dist.all_gather_object(pids, os.getpid())
    os.environ["SIGNAL_PIDS"] = ",".join(map(str, pids))
    exit_file = os.path.join(opts.output_dir, f"exit-{dist.get_rank()}.txt")
    try:
        trainer.train(resume_from_checkpoint=last_complete_checkpoint(opts.output_dir))
    except SystemExit as stop:
        with open(exit_file, "w") as f:
            f.write(str(stop.code))
        raise
    with open(exit_file, "w") as f:
        f.write("0")
    if dist.get_rank() == 0:
        weights = trainer.accelerator.unwrap_model(trainer.model).state_dict()
        torch.save({k: v.detach().clone() for k, v in weights.items()}, os.path.join(opts.output_dir, "final.pt"))


if __name__ == "__main__":
    main()
    leave_process_group()
