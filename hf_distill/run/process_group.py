"""How a launched run ends: every process leaves the distributed group together, and the group is destroyed."""

import gc

import torch.distributed as dist


def leave_process_group() -> None:
    """Accelerate's `end_training` for a command that has finished all its work; a no-op without a group.

    A gloo group still referenced at interpreter exit (by the DDP wrapper in a finished trainer's reference cycles)
    is torn down by C++ static destructors, which abort ("terminate called without an active exception", exit -6)
    when its threads are still running: the run did its work but the launcher reports a failure. So the garbage is
    collected first, and the ranks leave together, because a rank exiting while another still talks to gloo aborts.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
