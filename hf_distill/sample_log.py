"""Per-example distillation statistics (`samples.csv`): which examples the student matches worst."""

import csv
import os

import torch
from accelerate import Accelerator

from .metric_names import PER_TOKEN

COLUMNS = ("step", "split", "id", "tokens", *PER_TOKEN.values())


class SampleLog:
    """Buffers one row per example and appends them to `path` from the main process.

    Values are per-token means over the example's target tokens. Rows are gathered from every process with
    `gather_for_metrics`, which also drops the duplicates that pad an uneven last evaluation batch.

    Examples are named by the batch's `id`s. Evaluation batches without ids are named by their index in the eval
    dataset: its sampler is sequential and process p's k-th batch is the dataset's batch k * processes + p, so the
    gathered rows of each round of batches, padding dropped, come in dataset order and a running count is the index.
    Training batches are shuffled, and so are evaluation batches under `train_sampling_strategy: group_by_length`
    (Trainer's eval sampler then groups by length too): without ids, no example could be named.
    """

    def __init__(self, accelerator: Accelerator, path: str, eval_in_order: bool = True):
        self.accelerator = accelerator
        self.path = path
        self.eval_in_order = eval_in_order
        self.rows: list[tuple] = []
        self._unnamed = 0

    def add(self, split: str, step: int, ids: list | None, terms: dict[str, torch.Tensor]) -> None:
        if ids is None and split == "train":
            raise ValueError(
                "track_samples includes 'train', but the training batches carry no 'id' field to name their "
                "examples: give the train dataset an 'id' column and collate it with hf_distill.data."
                "DistillDataCollator, or remove 'train' from track_samples"
            )
        if ids is None and not self.eval_in_order:
            raise ValueError(
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
            self.rows.append((step, split, example_id, int(tokens), *(value / n for value in sums)))

    def flush(self) -> None:
        # An evaluation ends with a flush: the next one numbers its examples from 0 again.
        self._unnamed = 0
        if not self.rows:
            return
        if self.accelerator.is_main_process:
            new = not os.path.exists(self.path)
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            with open(self.path, "a", newline="") as f:
                writer = csv.writer(f)
                if new:
                    writer.writerow(COLUMNS)
                writer.writerows(self.rows)
        self.rows = []
