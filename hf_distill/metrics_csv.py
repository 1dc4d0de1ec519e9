"""`metrics.csv`: every training and evaluation log of a run as one CSV row, written off the training thread."""

import csv
import os
import queue
import threading
import time
from collections.abc import Callable

from transformers import TrainerCallback

from .metric_names import EVAL_METRICS, LOSS, TRAIN_LOSSES, prefixed
from .sample_log import SampleLog

METRICS_FILE = "metrics.csv"
TRAIN_COLUMNS = (*TRAIN_LOSSES, "learning_rate", "grad_norm")
EVAL_COLUMNS = EVAL_METRICS
COLUMNS = ("step", "split", "epoch", *TRAIN_COLUMNS, "tokens_per_second", "elapsed_seconds", *EVAL_COLUMNS)

_FSYNC = object()
_STOP = object()


def truncate_csv(path: str, last_step: int) -> dict[str, str] | None:
    """Drop the rows of `path` whose `step` is past `last_step`; returns the last row kept, if any.

    The file is streamed (a `samples.csv` tracking training examples can be large) into a new file that replaces it
    only if rows were dropped. Replaced, not rewritten in place: a writer still appending to the old file (the
    thread of a run that crashed in this process) cannot interleave rows with the kept ones.
    """
    if not os.path.isfile(path):
        return None
    tmp = f"{path}.tmp"
    last, dropped = None, 0
    with open(path, newline="") as src, open(tmp, "w", newline="") as dst:
        reader = csv.DictReader(src)
        columns = reader.fieldnames or []
        writer = csv.DictWriter(dst, columns)
        writer.writeheader()
        for row in reader:
            # A row cut short by a crash lacks fields (None): its step may be cut too, so it cannot be trusted.
            if len(row) != len(columns) or None in row.values() or int(row["step"]) > last_step:
                dropped += 1
                continue
            writer.writerow(row)
            last = row
        dst.flush()
        os.fsync(dst.fileno())
    if dropped:
        os.replace(tmp, path)
    else:
        os.remove(tmp)
    return last


class _BackgroundCSVWriter:
    """Appends rows to a CSV file from a daemon thread; `flush` returns once every row put so far is on disk."""

    def __init__(self, path: str, columns: tuple[str, ...]):
        self.path = path
        self.columns = columns
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._error: Exception | None = None

    def write(self, row: dict) -> None:
        self._raise_error()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"csv-writer:{self.path}", daemon=True)
            self._thread.start()
        self._queue.put(row)

    def flush(self) -> None:
        if self._thread is not None:
            self._queue.put(_FSYNC)
            self._queue.join()
        self._raise_error()

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._queue.join()
            self._thread.join()
            self._thread = None
        self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise OSError(f"cannot write {self.path}: {error}") from error

    def _run(self) -> None:
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            new = not os.path.isfile(self.path) or os.path.getsize(self.path) == 0
            with open(self.path, "a", newline="") as f:
                writer = csv.DictWriter(f, self.columns, restval="", extrasaction="ignore")
                if new:
                    writer.writeheader()
                while True:
                    item = self._queue.get()
                    try:
                        if item is _STOP:
                            f.flush()
                            os.fsync(f.fileno())
                            return
                        if item is _FSYNC:
                            f.flush()
                            os.fsync(f.fileno())
                        else:
                            writer.writerow(item)
                    finally:
                        self._queue.task_done()
        except Exception as err:
            # The training thread reports the error; this thread keeps consuming so that its flush() cannot hang.
            self._error = err
            while self._queue.get() is not _STOP:
                self._queue.task_done()
            self._queue.task_done()


class MetricsCSVCallback(TrainerCallback):
    """Appends each log of the main process to `output_dir/metrics.csv` (columns `COLUMNS`, `split` train or eval).

    `DistillTrainer` always registers it, with `write_metrics=args.metrics_csv`: `samples.csv` needs its flushes and
    resume handling even when `metrics.csv` is off. Rows are written by a background thread, so training never waits
    on the disk, except before each checkpoint and at the end of training, where the files are flushed and fsync'ed:
    a checkpoint is never ahead of them. When training resumes from checkpoint-N, the rows past step N that the
    interrupted run left in `metrics.csv` (and in the `samples.csv` of `sample_log`) are dropped first, so the files
    hold each step once, and `elapsed_seconds` continues from the last row kept.

    Args:
        tokens_seen (`Callable[[], int]`, *optional*):
            Returns the number of target tokens trained on so far, summed over processes; `tokens_per_second` is its
            increase over a logging window divided by the window's seconds spent training (evaluations and checkpoint
            saves excluded). Without it the column stays empty.
        sample_log (`SampleLog`, *optional*):
            The trainer's per-example log: flushed at every checkpoint and truncated on resume like `metrics.csv`.
        write_metrics (`bool`, *optional*, defaults to `True`):
            Whether to write `metrics.csv`; when false, the callback only keeps `sample_log` in step with checkpoints.
    """

    def __init__(
        self,
        tokens_seen: Callable[[], int] | None = None,
        sample_log: SampleLog | None = None,
        write_metrics: bool = True,
    ):
        self.tokens_seen = tokens_seen
        self.sample_log = sample_log
        self.write_metrics = write_metrics
        self._writer: _BackgroundCSVWriter | None = None
        self._training = False
        self._start: float | None = None
        self._elapsed_before = 0.0
        self._window_start = self._mark = 0.0
        self._window_tokens = 0
        self._paused = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self._training = True
        if not state.is_world_process_zero:
            return
        self._close()
        # state.global_step is already the checkpoint's step here: Trainer loads the state before this event.
        last = None
        if self.write_metrics:
            last = truncate_csv(os.path.join(args.output_dir, METRICS_FILE), state.global_step)
        if self.sample_log is not None:
            truncate_csv(self.sample_log.path, state.global_step)
        # Rows are appended in time order: the last one kept carries the clock of the interrupted run.
        self._elapsed_before = float(last.get("elapsed_seconds") or 0) if last is not None else 0.0
        self._start = self._window_start = self._mark = time.perf_counter()
        self._window_tokens = self._tokens()
        self._paused = 0.0

    def on_step_end(self, args, state, control, **kwargs):
        self._mark = time.perf_counter()
        self._flush_if_saving(state, control)

    def on_epoch_end(self, args, state, control, **kwargs):
        self._flush_if_saving(state, control)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs and self.write_metrics:
            self._write(args, state, logs)
        self._flush_if_saving(state, control)

    def on_evaluate(self, args, state, control, **kwargs):
        if not self._training:
            # An evaluation outside training (after it, or on its own) has no later checkpoint to flush its row.
            if state.is_world_process_zero:
                self._close()
            return
        # With save_strategy "best", whether a checkpoint follows is decided only after this event.
        self._flush(state)
        self._pause()

    def on_save(self, args, state, control, **kwargs):
        # Already flushed when the save was announced; this catches a save that another callback decided late.
        self._flush(state)
        self._pause()

    def on_train_end(self, args, state, control, **kwargs):
        self._training = False
        if state.is_world_process_zero:
            self._close()

    def _write(self, args, state, logs: dict) -> None:
        now = time.perf_counter()
        if LOSS in logs:
            row = {"split": "train", **{k: logs.get(k) for k in TRAIN_COLUMNS}}
            seconds = now - self._window_start - self._paused
            tokens = self._tokens()
            if self.tokens_seen is not None and seconds > 0:
                row["tokens_per_second"] = (tokens - self._window_tokens) / seconds
            self._window_start = self._mark = now
            self._window_tokens = tokens
            self._paused = 0.0
        elif prefixed(LOSS) in logs:
            row = {"split": "eval", **{k: logs.get(k) for k in EVAL_COLUMNS}}
        else:
            return
        row["step"] = state.global_step
        row["epoch"] = logs.get("epoch")
        if self._start is not None:
            row["elapsed_seconds"] = self._elapsed_before + now - self._start
        if self._writer is None:
            self._writer = _BackgroundCSVWriter(os.path.join(args.output_dir, METRICS_FILE), COLUMNS)
        self._writer.write(row)

    def _flush_if_saving(self, state, control) -> None:
        # Trainer saves a checkpoint right after this step's log and evaluation, and tells no callback before the
        # save itself: flushing at each of these events while a save is due keeps the files ahead of the checkpoint.
        if control.should_save:
            self._flush(state)

    def _flush(self, state) -> None:
        # A checkpoint must not be ahead of the files: on resume, the rows up to its step are kept, never rewritten.
        if self.sample_log is not None:
            self.sample_log.flush()
        if state.is_world_process_zero and self._writer is not None:
            self._writer.flush()

    def _tokens(self) -> int:
        return self.tokens_seen() if self.tokens_seen is not None else 0

    def _pause(self) -> None:
        # Time since the last step or log went to evaluating or saving, not training: keep it out of tokens/s.
        now = time.perf_counter()
        self._paused += now - self._mark
        self._mark = now

    def _close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()
