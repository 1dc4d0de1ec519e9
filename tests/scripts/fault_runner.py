"""Runs `hf-distill` commands with a fault injected at a chosen moment; used by test_injected_faults.py.

python tests/scripts/fault_runner.py

Reads jobs from stdin, one JSON object per line: `{"argv": [...], "fault": FAULT, "log": PATH, "events": PATH}`,
and answers each with one line, the job's exit status (a negative number: killed by that signal). Each job runs
`hf_distill.cli.main(argv)` in a child forked from this process, which imports the library once: a fresh interpreter
per run would cost more than the tiny run itself. The child's stdout and stderr go to `log`.

FAULT is null (no fault) or `ACTION:POINT:N`: at the N-th time the run reaches POINT, ACTION happens. POINTs:

- `step`: the end of a micro-batch's training step (before the optimizer step);
- `torch.save` / `safetensors`: a file written by `torch.save` / by safetensors (checkpoint and final weights); the
  file gets the first half of its bytes, as a write cut short leaves it;
- `rename`: an `os.replace` (checkpoint markers, the final save's moves, cache shards), before it happens;
- `evaluate`: an evaluation batch, before its forward pass;
- `teacher`: a teacher forward pass of `hf-distill cache-teacher`.

ACTIONs: `kill` (SIGKILL, as `kill -9` or the OOM killer), `enospc` (the write raises the error a full disk
gives: `OSError(ENOSPC)` from torch.save, safetensors' `StorageFull` message; `torch.save` and `safetensors` only),
and `pause` (the run creates `LOG.paused` and waits there until `LOG.resume` exists, then goes on).

With `events`, the child writes there every moment it reached, in order: `[point, n, phase]`, phase being
`train`, `checkpoint`, `evaluate`, `final save` or `cache` (moments outside these, such as dataset caching, are not
counted, so counts do not depend on what an earlier run left in a cache).
"""

import errno
import io
import json
import os
import signal
import sys
import time

import datasets
import safetensors.torch
import torch
import transformers.modeling_utils
from safetensors import SafetensorError

import hf_distill.commands.train
from hf_distill import DistillTrainer
from hf_distill.cli import main
from hf_distill.commands import cache_teacher
from hf_distill.teachers import cache_builder

FULL = 'IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'


class Injector:
    def __init__(self, fault: str | None, events_path: str | None, log: str):
        action, point, n = fault.split(":") if fault else (None, None, "0")
        self.action, self.point, self.n = action, point, int(n)
        self.events_path = events_path
        self.events: list = []
        self.counts: dict[str, int] = {}
        self.phase: str | None = None
        self.log = log

    def reach(self, point: str, partial: tuple | None = None) -> None:
        """The run reached `point`; `partial` is `(path, bytes)` of a file being written there."""
        if self.phase is None:
            return
        self.counts[point] = self.counts.get(point, 0) + 1
        self.events.append([point, self.counts[point], self.phase])
        if (point, self.counts[point]) != (self.point, self.n):
            return
        if self.action == "pause":
            open(f"{self.log}.paused", "w").close()
            while not os.path.exists(f"{self.log}.resume"):
                time.sleep(0.05)
            return
        if partial is not None:
            path, data = partial
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
        if self.action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if point == "safetensors":
            raise SafetensorError(f"Error while serializing: {FULL}")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), partial[0] if partial else None)

    def in_phase(self, phase: str, function):
        def wrapped(*args, **kwargs):
            outer, self.phase = self.phase, phase
            try:
                return function(*args, **kwargs)
            finally:
                self.phase = outer

        return wrapped

    def install(self) -> None:
        save, save_file, replace = torch.save, transformers.modeling_utils.safe_save_file, os.replace

        def torch_save(obj, f, *args, **kwargs):
            if isinstance(f, str):
                buffer = io.BytesIO()
                save(obj, buffer, *args, **kwargs)
                self.reach("torch.save", (f, buffer.getvalue()))
            return save(obj, f, *args, **kwargs)

        def safe_save(tensors, filename, metadata=None):
            self.reach("safetensors", (filename, safetensors.torch.save(tensors, metadata=metadata)))
            return save_file(tensors, filename, metadata=metadata)

        def os_replace(*args, **kwargs):
            self.reach("rename")
            return replace(*args, **kwargs)

        torch.save, transformers.modeling_utils.safe_save_file, os.replace = torch_save, safe_save, os_replace

        train = DistillTrainer.train
        training_step, prediction_step = DistillTrainer.training_step, DistillTrainer.prediction_step

        def step(trainer, *args, **kwargs):
            loss = training_step(trainer, *args, **kwargs)
            self.reach("step")
            return loss

        def predict(trainer, *args, **kwargs):
            self.reach("evaluate")
            return prediction_step(trainer, *args, **kwargs)

        DistillTrainer.train = self.in_phase("train", train)
        DistillTrainer.training_step, DistillTrainer.prediction_step = step, predict
        DistillTrainer._save_checkpoint = self.in_phase("checkpoint", DistillTrainer._save_checkpoint)
        DistillTrainer.evaluate = self.in_phase("evaluate", DistillTrainer.evaluate)
        hf_distill.commands.train.save_final_model = self.in_phase(
            "final save", hf_distill.commands.train.save_final_model
        )
        topk = cache_builder.teacher_topk

        def teacher(*args, **kwargs):
            self.reach("teacher")
            return topk(*args, **kwargs)

        cache_builder.teacher_topk = teacher
        cache_teacher.write_shard = self.in_phase("cache", cache_teacher.write_shard)

    def write_events(self) -> None:
        if self.events_path:
            with open(self.events_path, "w") as f:
                json.dump(self.events, f)


def child(job: dict) -> None:
    fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    injector = Injector(job.get("fault"), job.get("events"), job["log"])
    injector.install()
    code = 0
    try:
        main(job["argv"])
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    injector.write_events()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run() -> None:
    datasets.disable_progress_bars()
    for line in sys.stdin:
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:
            child(job)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), flush=True)


if __name__ == "__main__":
    run()
