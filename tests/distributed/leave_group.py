"""How the 2-process scripts in this folder end: together, and without the interpreter's teardown."""

import os
import sys

import torch.distributed as dist


def leave_process_group() -> None:
    # Both ranks leave together: a rank exiting while the other still talks to gloo aborts ("terminate called").
    dist.barrier()
    dist.destroy_process_group()
    # torch 2.13's gloo threads sometimes abort in C++ static destructors at interpreter exit ("terminate called
    # without an active exception", exit -6) after all work is done and saved; leave without running them.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
