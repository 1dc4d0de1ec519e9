"""Per-example distillation statistics (`samples.csv`): which examples the student matches worst."""

import csv
import os

import torch
from accelerate import Accelerator

COLUMNS = ("step", "split", "id", "tokens", "ce_loss", "kd_loss", "teacher_agreement")


class SampleLog:
    """Buffers one row per example and appends them to `path` from the main process.

    Values are per-token means over the example's target tokens. Rows are gathered from every process with
    `gather_for_metrics`, which also drops the duplicates that pad an uneven last evaluation batch.
    """

    def __init__(self, accelerator: Accelerator, path: str):
        self.accelerator = accelerator
        self.path = path
        self.rows: list[tuple] = []
        self._unnamed = 0

    def add(self, split: str, step: int, ids: list | None, terms: dict[str, torch.Tensor]) -> None:
        stats = torch.stack([terms["tokens"], terms["ce"], terms["kd"], terms["agree"]], dim=-1).detach().float()
        if ids is None:
            # Without an id column, evaluation order (sequential) makes the running position the example's index.
            ids = [str(self._unnamed + i) for i in range(len(stats))]
            self._unnamed += len(stats)
        stats = self.accelerator.gather_for_metrics(stats).cpu()
        ids = self.accelerator.gather_for_metrics(list(ids))
        for example_id, (tokens, ce, kd, agree) in zip(ids, stats.tolist()):
            n = max(tokens, 1.0)
            self.rows.append((step, split, example_id, int(tokens), ce / n, kd / n, agree / n))

    def flush(self) -> None:
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
