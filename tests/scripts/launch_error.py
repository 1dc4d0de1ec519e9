"""An `hf-distill` command on a bad input under `accelerate launch`; used by test_launch.py.

accelerate launch --config_file accelerate_configs/cpu_2proc.yaml tests/scripts/launch_error.py COMMAND RECIPE.yaml \
    [--key value ...]

Each rank prints `rank R: exit CODE in a process group of N` on stdout when the command exits.
"""

import os
import sys

import torch.distributed as dist

from hf_distill.cli import main

if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except SystemExit as stop:
        size = dist.get_world_size() if dist.is_initialized() else None
        print(f"rank {os.environ['RANK']}: exit {stop.code} in a process group of {size}", flush=True)
        raise
