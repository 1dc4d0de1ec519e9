"""`hf-distill train` under `accelerate launch`, checked after the command returned; used by test_launch.py.

accelerate launch --config_file accelerate_configs/cpu_2proc.yaml tests/scripts/launch_cli.py RECIPE.yaml \
    [--key value ...]

Each rank prints `rank R: left a 2-process group, no DDP wrapper alive` once the checks passed.
"""

import gc
import os
import sys

import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from hf_distill.cli import main

destroy = dist.destroy_process_group
left_sizes = []


def checking_destroy(group=None):
    left_sizes.append(dist.get_world_size())
    # Uncollected garbage counts: a wrapper left to the interpreter's exit takes the group's gloo threads with it to
    # the C++ static destructors, which abort.
    alive = [o for o in gc.get_objects() if isinstance(o, DistributedDataParallel)]
    assert not alive, f"{len(alive)} DDP wrapper(s) alive when the process group is destroyed"
    destroy(group)


if __name__ == "__main__":
    dist.destroy_process_group = checking_destroy
    main(["train", *sys.argv[1:]])
    # The trap this guards against: two processes that each train alone also finish without an error.
    assert left_sizes == [2], f"the command left process groups of sizes {left_sizes}, expected one of 2"
    assert not dist.is_initialized(), "the process group is still initialized"
    print(f"rank {os.environ['RANK']}: left a 2-process group, no DDP wrapper alive", flush=True)
