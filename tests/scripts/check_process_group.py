"""Check that a launch forms one process group: each process prints Accelerate's view and all-reduces its rank.

accelerate launch --config_file accelerate_configs/cpu_2proc.yaml tests/scripts/check_process_group.py --use_cpu

In a real group of N processes each prints `rank i/N` and `all_reduce(rank + 1) = N(N+1)/2`. A process that
Accelerate sees as alone prints `rank 0/1` and would train its own model on the whole dataset, even where
torch.distributed reports a group. `--use_cpu` sets up the state as `TrainingArguments(use_cpu=True)` does.
"""

import argparse
import os

import torch
import torch.distributed as dist
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--use_cpu", action="store_true", help="as TrainingArguments(use_cpu=True)")
    # TrainingArguments also honours the variable `accelerate launch --cpu` sets.
    cpu = parser.parse_args().use_cpu or parse_flag_from_env("ACCELERATE_USE_CPU")
    state = PartialState(cpu=cpu)
    grouped = dist.is_available() and dist.is_initialized()
    group = f"{dist.get_backend()} world_size={dist.get_world_size()}" if grouped else "none"
    value = torch.tensor([float(state.process_index + 1)])
    if grouped:
        dist.all_reduce(value)
    print(
        f"rank {state.process_index}/{state.num_processes} pid={os.getpid()} "
        f"env RANK={os.environ.get('RANK')} WORLD_SIZE={os.environ.get('WORLD_SIZE')} "
        f"distributed_type={state.distributed_type.value} device={state.device} threads={torch.get_num_threads()} "
        f"process group: {group} "
        f"all_reduce(rank + 1) = {value.item():g}",
        flush=True,
    )


if __name__ == "__main__":
    main()
