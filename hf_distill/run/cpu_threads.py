"""Torch threads of a CPU training run: its share of the cores other processes leave free.

torch's threads wait for each other at the end of every parallel operation, so one thread that another process keeps
off its core stalls them all: with other work running on the 2-core project machine, 30 demo steps took 12-65 s at
2 threads and 3-6 s at 1 (README, Performance). Several processes of one run on one machine (`accelerate launch`
with `use_cpu`) share the cores the same way.
"""

import logging
import os

import torch

logger = logging.getLogger(__name__)


def torch_threads(cores: int, load: float, local_processes: int = 1) -> int:
    """Threads for each of `local_processes` processes of one run on `cores` cores while other processes keep `load`
    cores busy (the 1-minute load average, read before the run computes): the free cores, rounded to the nearest
    whole core, split evenly, at least 1 each. Quiet, that is `max(1, cores // local_processes)`."""
    free = max(1, int(cores - load + 0.5))
    return max(1, free // local_processes)


def oversubscription_warning(threads: int, cores: int, load: float, local_processes: int = 1) -> str | None:
    """The warning for `threads` torch threads chosen by the user (`OMP_NUM_THREADS`) on `cores` cores while other
    processes keep `load` cores busy, or None when they leave the threads enough cores (`torch_threads`)."""
    advice = torch_threads(cores, load, local_processes)
    if threads <= advice:
        return None
    run = f" and {local_processes} processes of this run" if local_processes > 1 else ""
    return (
        f"torch runs {threads} threads on {cores} CPU cores with a 1-minute load average of {load:.1f} from other "
        f"processes{run}; its threads then wait for each other and steps can take 10x longer: set "
        f"OMP_NUM_THREADS={advice} for this run"
    )


def _cpu_situation() -> tuple[int, float, int]:
    """The cores this process may run on, the 1-minute load average, and the processes of this run on this machine
    (`LOCAL_WORLD_SIZE`, set by torchrun and `accelerate launch`)."""
    return len(os.sched_getaffinity(0)), os.getloadavg()[0], int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def choose_torch_threads() -> None:
    """Set the torch threads of a CPU run whose thread count nobody chose (no `OMP_NUM_THREADS`) to `torch_threads`,
    with one logged line when that changes torch's count; warn instead when a chosen count is too high.

    Call it before the first parallel operation. `accelerate launch` and torchrun set `OMP_NUM_THREADS` for the
    processes they start (Accelerate: physical cores // local processes with `use_cpu`, else 1), which counts as a
    choice. In a multi-process run the count is also written to `OMP_NUM_THREADS`, because Accelerate's state, built
    later, sets its own count in a multi-process CPU run started without it (mpirun, srun); a single process leaves
    its environment alone (a program that calls `hf_distill.cli.main` and then launches processes would pass it on).
    """
    if torch.cuda.is_available():
        return
    cores, load, local_processes = _cpu_situation()
    if "OMP_NUM_THREADS" in os.environ:
        message = oversubscription_warning(torch.get_num_threads(), cores, load, local_processes)
        if message:
            logger.warning(message)
        return
    threads = torch_threads(cores, load, local_processes)
    if local_processes > 1:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
        run = f", {local_processes} processes of this run" if local_processes > 1 else ""
        logger.warning(
            f"using {threads} torch threads per process: {cores} CPU cores, a 1-minute load average of {load:.1f} "
            f"from other processes{run} (set OMP_NUM_THREADS to choose)"
        )
