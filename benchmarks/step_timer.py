"""`StepTimer`: the per-step times the benchmarks compare, recorded by a `TrainerCallback`."""

import time

from transformers import TrainerCallback


class StepTimer(TrainerCallback):
    """Per optimizer step: `step_times`, wall time from the end of the previous step (data loading, and an on-policy
    step's generation, inside); `compute_times`, wall time from the step's begin event; `cpu_times`, the process's
    CPU time over the same span as `step_times` (steadier than wall time on a shared machine)."""

    def __init__(self):
        self.step_times: list[float] = []
        self.compute_times: list[float] = []
        self.cpu_times: list[float] = []
        self._last_end = self._last_cpu = self._begin = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_end, self._last_cpu = time.perf_counter(), time.process_time()

    def on_step_begin(self, args, state, control, **kwargs):
        self._begin = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now, cpu = time.perf_counter(), time.process_time()
        self.step_times.append(now - self._last_end)
        self.compute_times.append(now - self._begin)
        self.cpu_times.append(cpu - self._last_cpu)
        self._last_end, self._last_cpu = now, cpu
