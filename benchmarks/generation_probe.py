"""`GenerationProbe`: the seconds and tokens of each generation call of a `DistillTrainer`, and of each weight sync
of its vLLM engine, recorded around its generation backend (`hf_distill.generation.backends`)."""

import time
from collections.abc import Callable


class GenerationProbe:
    """Wraps `trainer._backend`'s `complete` (and, with vLLM, `sync`, which `complete` calls first) on the instance.
    Per call of `complete`, that is per on-policy optimizer step: `generation_seconds` (the engine's or `generate`'s
    time, the sync left out), `tokens` (completion tokens written) and `sync_seconds` (0.0 without a sync).
    `device_sync` waits for queued GPU work before each clock reading (`torch.cuda.synchronize`)."""

    def __init__(self, trainer, device_sync: Callable[[], None] = lambda: None):
        self.generation_seconds: list[float] = []
        self.tokens: list[int] = []
        self.sync_seconds: list[float] = []
        backend, self._device_sync = trainer._backend, device_sync
        complete, sync = backend.complete, getattr(backend, "sync", None)
        self._pending_sync = 0.0

        def timed_complete(writer, prompts, step):
            device_sync()
            began, self._pending_sync = time.perf_counter(), 0.0
            completions = complete(writer, prompts, step)
            device_sync()
            self.generation_seconds.append(time.perf_counter() - began - self._pending_sync)
            self.sync_seconds.append(self._pending_sync)
            self.tokens.append(sum(len(row) for c in completions for row in c.tokens))
            return completions

        def timed_sync(step):
            device_sync()
            began = time.perf_counter()
            sync(step)
            device_sync()
            self._pending_sync += time.perf_counter() - began

        backend.complete = timed_complete
        if sync is not None:
            backend.sync = timed_sync

    def tokens_per_second(self, skip: int) -> float:
        """Completion tokens per second of generation over the calls after the first `skip`."""
        return sum(self.tokens[skip:]) / sum(self.generation_seconds[skip:])
