"""One process of a multi-process CPU launch started without `OMP_NUM_THREADS` (as mpirun or srun start them): it
chooses its torch threads as `hf-distill` does, on a machine made quiet (the load average read as 0, so that the
split alone decides), then joins the process group and prints what it saw:

`rank R of N: threads before the group T1, after T2, cores C`
"""

import os

import torch
from accelerate import PartialState

from hf_distill.run import cpu_threads
from hf_distill.run.process_group import leave_process_group

cpu_threads.os.getloadavg = lambda: (0.0, 0.0, 0.0)
cpu_threads.choose_torch_threads()
before = torch.get_num_threads()
# Accelerate's state sets its own count in a multi-process CPU run without OMP_NUM_THREADS: it must keep ours.
state = PartialState(cpu=True)
print(
    f"rank {state.process_index} of {state.num_processes}: threads before the group {before}, "
    f"after {torch.get_num_threads()}, cores {len(os.sched_getaffinity(0))}",
    flush=True,
)
leave_process_group()
