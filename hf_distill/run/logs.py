"""The files a run writes beside its checkpoints: `metrics.csv` (every log) and `samples.csv` (per-example values)."""

import csv
import os
import time
from collections.abc import Callable

import torch
from accelerate import Accelerator
from transformers import TrainerCallback

from ..metrics.names import (
    EVAL_METRICS,
    GENERATED_EVAL_METRICS,
    GENERATION_METRICS,
    LOSS,
    PER_TOKEN,
    TRAIN_LOSSES,
    prefixed,
)
from ..user_errors import UserInputError
from .csv_writer import BackgroundCSVWriter, truncate_csv

METRICS_FILE = "metrics.csv"
SAMPLES_FILE = "samples.csv"
COMPLETIONS_FILE = "completions.csv"
TRAIN_COLUMNS = (*TRAIN_LOSSES, "learning_rate", "grad_norm", *GENERATION_METRICS)
EVAL_COLUMNS = (*EVAL_METRICS, *GENERATED_EVAL_METRICS)
METRICS_COLUMNS = ("step", "split", "epoch", *TRAIN_COLUMNS, "tokens_per_second", "elapsed_seconds", *EVAL_COLUMNS)
SAMPLES_COLUMNS = ("step", "split", "id", "tokens", *PER_TOKEN.values())
COMPLETIONS_COLUMNS = ("step", "id", "writer", "prompt", "completion", "tokens", "kd_loss", "truncated")


class RunFilesCallback(TrainerCallback):
    """Owns `output_dir/metrics.csv`, `output_dir/samples.csv` and `output_dir/completions.csv`: their names, columns,
    flushes and resume.

    `metrics.csv` gets each log of the main process as one row (columns `METRICS_COLUMNS`, `split` train or eval),
    written by a background thread so that training never waits on the disk. `samples.csv` gets one row per example
    (columns `SAMPLES_COLUMNS`) from `add_samples`, buffered until `flush_samples`. Before each checkpoint and at the
    end of training both files are flushed (and `metrics.csv` fsync'ed): a checkpoint is never ahead of them. When
    training resumes from checkpoint-N, the rows past step N that the interrupted run left in both files are dropped
    first, so the files hold each step once, and `elapsed_seconds` continues from the last row kept.
    `completions.csv` (columns `COMPLETIONS_COLUMNS`) gets the generated sequences `add_completions` is given, from
    a background thread like `metrics.csv`, flushed and truncated with it.

    `DistillTrainer` always registers it, with `write_metrics=args.metrics_csv`: `samples.csv` needs its flushes and
    resume handling even when `metrics.csv` is off.

    Args:
        accelerator (`Accelerator`):
            Gathers the per-example rows of every process; the main process writes them.
        output_dir (`str`):
            The folder of both files.
        tokens_seen (`Callable[[], int]`, *optional*):
            Returns the number of target tokens trained on so far, summed over processes; `tokens_per_second` is its
            increase over a logging window divided by the window's seconds spent training (evaluations and checkpoint
            saves excluded). Without it the column stays empty.
        write_metrics (`bool`, *optional*, defaults to `True`):
            Whether to write `metrics.csv`; when false, only `samples.csv` is written and kept in step with
            checkpoints.
        eval_in_order (`bool`, *optional*, defaults to `True`):
            Whether evaluation batches come in dataset order (false under `train_sampling_strategy:
            group_by_length`), which is what lets examples without ids be named by their index.
    """

    def __init__(
        self,
        accelerator: Accelerator,
        output_dir: str,
        tokens_seen: Callable[[], int] | None = None,
        write_metrics: bool = True,
        eval_in_order: bool = True,
    ):
        self.accelerator = accelerator
        self.metrics_path = os.path.join(output_dir, METRICS_FILE)
        self.samples_path = os.path.join(output_dir, SAMPLES_FILE)
        self.completions_path = os.path.join(output_dir, COMPLETIONS_FILE)
        self._completions: BackgroundCSVWriter | None = None
        self.tokens_seen = tokens_seen
        self.write_metrics = write_metrics
        self.eval_in_order = eval_in_order
        self._samples: list[tuple] = []
        self._unnamed = 0
        self._writer: BackgroundCSVWriter | None = None
        self._training = False
        self._start: float | None = None
        self._elapsed_before = 0.0
        self._window_start = self._mark = 0.0
        self._window_tokens = 0
        self._paused = 0.0

    # ---- samples.csv ----

    def add_samples(self, split: str, step: int, ids: list | None, terms: dict[str, torch.Tensor]) -> None:
        """Buffer one row per example of a batch, from every process (a collective: call on all).

        `terms` holds the per-example sums over target tokens (`metric_names.TERMS`); a row holds their per-token
        means. Rows are gathered with `gather_for_metrics`, which also drops the duplicates that pad an uneven last
        evaluation batch.

        Examples are named by the batch's `ids`. Evaluation batches without ids are named by their index in the eval
        dataset: its sampler is sequential and process p's k-th batch is the dataset's batch k * processes + p, so the
        gathered rows of each round of batches, padding dropped, come in dataset order and a running count is the
        index. Training batches are shuffled, and so are evaluation batches under `train_sampling_strategy:
        group_by_length` (Trainer's eval sampler then groups by length too): without ids, no example could be named.
        """
        if ids is None and split == "train":
            raise UserInputError(
                "track_samples includes 'train', but the training batches carry no 'id' field to name their "
                "examples: give the train dataset an 'id' column and collate it with hf_distill.data.datasets."
                "DistillDataCollator, or remove 'train' from track_samples"
            )
        if ids is None and not self.eval_in_order:
            raise UserInputError(
                "track_samples includes 'eval', but the evaluation batches carry no 'id' field and "
                "train_sampling_strategy='group_by_length' reorders them, so their examples cannot be named: give the "
                "eval dataset an 'id' column and collate it with hf_distill.data.DistillDataCollator, or remove "
                "'eval' from track_samples"
            )
        stats = torch.stack([terms[name] for name in ("tokens", *PER_TOKEN)], dim=-1).detach().float()
        stats = self.accelerator.gather_for_metrics(stats).cpu()
        if ids is None:
            ids = [str(self._unnamed + i) for i in range(len(stats))]
            self._unnamed += len(stats)
        else:
            ids = self.accelerator.gather_for_metrics(list(ids))
        for example_id, (tokens, *sums) in zip(ids, stats.tolist()):
            n = max(tokens, 1.0)
            self._samples.append((step, split, example_id, int(tokens), *(value / n for value in sums)))

    def flush_samples(self) -> None:
        """Append the buffered rows to `samples.csv` from the main process (call on all, at the end of each log or
        evaluation)."""
        # An evaluation ends with a flush: the next one numbers its examples from 0 again.
        self._unnamed = 0
        if not self._samples:
            return
        if self.accelerator.is_main_process:
            new = not os.path.exists(self.samples_path)
            os.makedirs(os.path.dirname(self.samples_path) or ".", exist_ok=True)
            with open(self.samples_path, "a", newline="") as f:
                writer = csv.writer(f)
                if new:
                    writer.writerow(SAMPLES_COLUMNS)
                writer.writerows(self._samples)
        self._samples = []

    # ---- completions.csv ----

    def add_completions(self, rows: list[dict]) -> None:
        """Append generated sequences (dicts with `COMPLETIONS_COLUMNS`), gathered already: main process only."""
        if self._completions is None:
            self._completions = BackgroundCSVWriter(self.completions_path, COMPLETIONS_COLUMNS)
        for row in rows:
            self._completions.write(row)

    # ---- events ----

    def on_train_begin(self, args, state, control, **kwargs):
        self._training = True
        if not state.is_world_process_zero:
            return
        self._close()
        # state.global_step is already the checkpoint's step here: Trainer loads the state before this event.
        last = truncate_csv(self.metrics_path, state.global_step) if self.write_metrics else None
        truncate_csv(self.samples_path, state.global_step)
        truncate_csv(self.completions_path, state.global_step)
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
            self._write_metrics(state, logs)
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

    # ---- metrics.csv ----

    def _write_metrics(self, state, logs: dict) -> None:
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
            self._writer = BackgroundCSVWriter(self.metrics_path, METRICS_COLUMNS)
        self._writer.write(row)

    def _flush_if_saving(self, state, control) -> None:
        # Trainer saves a checkpoint right after this step's log and evaluation, and tells no callback before the
        # save itself: flushing at each of these events while a save is due keeps the files ahead of the checkpoint.
        if control.should_save:
            self._flush(state)

    def _flush(self, state) -> None:
        # A checkpoint must not be ahead of the files: on resume, the rows up to its step are kept, never rewritten.
        self.flush_samples()
        if state.is_world_process_zero:
            for writer in (self._writer, self._completions):
                if writer is not None:
                    writer.flush()

    def _tokens(self) -> int:
        return self.tokens_seen() if self.tokens_seen is not None else 0

    def _pause(self) -> None:
        # Time since the last step or log went to evaluating or saving, not training: keep it out of tokens/s.
        now = time.perf_counter()
        self._paused += now - self._mark
        self._mark = now

    def _close(self) -> None:
        writers, self._writer, self._completions = (self._writer, self._completions), None, None
        for writer in writers:
            if writer is not None:
                writer.close()
