"""A cross-tokenizer recipe's trainer (as `hf-distill train` builds it) trained by 2 processes; rank 0 saves the
student's weights and the log history to OUTPUT_DIR/result.pt. Used by test_cross_tokenizer_ddp.py.

torchrun --nproc_per_node 2 tests/scripts/cross_tokenizer_ddp.py RECIPE.yaml --output_dir OUT [--key value ...]
"""

import os
import sys

import torch
import torch.distributed as dist

from hf_distill.commands.recipe import parse_recipe
from hf_distill.commands.train import build_trainer
from hf_distill.run.process_group import leave_process_group


def main() -> None:
    trainer = build_trainer(*parse_recipe(sys.argv[1], sys.argv[2:]))
    assert dist.is_initialized() and dist.get_world_size() == 2, "no 2-process group was formed"
    trainer.train()
    if trainer.is_world_process_zero():
        weights = {
            k: v.detach().cpu().clone()
            for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()
        }
        result = {"world_size": dist.get_world_size(), "weights": weights, "log_history": trainer.state.log_history}
        torch.save(result, os.path.join(trainer.args.output_dir, "result.pt"))
    leave_process_group()


if __name__ == "__main__":
    main()
