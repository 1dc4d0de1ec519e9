"""The sampling seeds of generated completions: functions of the run's `seed` and a completion's place in the run,
never of a global random state (which a resumed run would not share)."""

import numpy as np


def generation_seed(config, step: int, process_index: int, micro_batch: int) -> int:
    """The seed of one micro-batch (transformers samples a whole batch from one seeded generator)."""
    return int(np.random.SeedSequence([config.seed, step, process_index, micro_batch]).generate_state(1)[0])


def row_seeds(config, step: int, process_index: int, micro_batch: int, rows: int) -> list[int]:
    """One seed per row of a micro-batch (vLLM seeds each request): a row's completion depends on its own place only,
    not on which rows share its engine call."""
    return [
        int(np.random.SeedSequence([config.seed, step, process_index, micro_batch, row]).generate_state(1)[0])
        for row in range(rows)
    ]
