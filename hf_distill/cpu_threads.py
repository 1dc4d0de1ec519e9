"""CPU training beside other busy processes: torch's threads wait for each other at the end of every parallel
operation, so one thread that another process keeps off its core stalls them all: with other work running on the
2-core project machine, 30 demo steps took 12-65 s at 2 threads and 3-6 s at 1 (README, Performance)."""

import logging
import os

import torch

logger = logging.getLogger(__name__)


def oversubscription_warning(threads: int, cores: int, load: float) -> str | None:
    """The warning for `threads` torch threads on `cores` cores while other processes keep `load` cores busy (the
    1-minute load average, read before this process computes), or None when they leave the threads enough cores."""
    if threads <= 1 or threads - 0.5 <= cores - load:
        return None
    advice = max(1, int(cores - load))
    return (
        f"torch runs {threads} threads on {cores} CPU cores with a 1-minute load average of {load:.1f} from other "
        f"processes; its threads then wait for each other and steps can take 10x longer: set "
        f"OMP_NUM_THREADS={advice} for this run"
    )


def warn_if_oversubscribed() -> None:
    """Log `oversubscription_warning` for a CPU run whose thread count nobody chose (no `OMP_NUM_THREADS`)."""
    if torch.cuda.is_available() or "OMP_NUM_THREADS" in os.environ:
        return
    message = oversubscription_warning(torch.get_num_threads(), len(os.sched_getaffinity(0)), os.getloadavg()[0])
    if message:
        logger.warning(message)
