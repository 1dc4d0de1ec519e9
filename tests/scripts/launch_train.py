"""A recipe's trainer (as `train.py` builds it) under `accelerate launch`, checked inside the run; used by
test_launch.py.

accelerate launch --config_file accelerate_configs/cpu_2proc.yaml tests/scripts/launch_train.py RECIPE.yaml \
    [--key value ...]

Each rank prints `rank R of 2: N steps, replicas identical` once the checks passed.
"""

import sys

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from hf_distill.commands.recipe import parse_recipe
from hf_distill.commands.train import build_trainer
from hf_distill.run.process_group import leave_process_group


class CheckTwoReplicas(TrainerCallback):
    """A real 2-process group while training, and the same student weights on both ranks after it."""

    def __init__(self):
        self.steps: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        # The trap this guards against: two processes that each train alone also finish without an error.
        assert dist.is_initialized() and dist.get_world_size() == 2, "no 2-process group was formed"
        assert args.world_size == 2, f"the Trainer sees world_size={args.world_size}"

    def on_train_end(self, args, state, control, model=None, **kwargs):
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(2)]
        dist.all_gather(gathered, flat)
        # The ranks trained on different examples: their weights agree only if the gradients were synchronised.
        assert torch.equal(gathered[0], gathered[1]), "replicas diverged: gradients were not synchronised"
        self.steps = state.global_step


def main() -> None:
    check = CheckTwoReplicas()
    trainer = build_trainer(*parse_recipe(sys.argv[1], sys.argv[2:]), callbacks=[check])
    trainer.train()
    assert check.steps is not None, "training ended without the check"
    print(f"rank {dist.get_rank()} of {dist.get_world_size()}: {check.steps} steps, replicas identical", flush=True)


if __name__ == "__main__":
    main()
    leave_process_group()
