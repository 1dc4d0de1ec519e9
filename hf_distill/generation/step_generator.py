"""On-policy and sequence-level distillation: which optimizer steps generate, and the batches they train on.

A generating step replaces each micro-batch's completions by generated ones: every row keeps its prompt (its tokens
before its last run of target labels; all of them when it has none) and gets a completion written by the student
(on-policy, GKD) or by the teacher (sequence-level KD), whose tokens become the row's targets. The new batch is laid
out like `DistillDataCollator` lays out a dataset's (right-padded, -100 outside the completion), so the loss and its
global token count work on it unchanged.
"""

from dataclasses import dataclass

import numpy as np
import torch
from accelerate.utils import gather_object

from ..data.datasets import split_prompt
from ..losses import IGNORE_INDEX
from ..metrics.names import COMPLETION_LENGTH, ON_POLICY_FRACTION, TEACHER_LOGPROB, TRUNCATED_FRACTION
from ..user_errors import UserInputError
from .hf_generate import Completions


@dataclass(frozen=True)
class GeneratedStep:
    """What a generating optimizer step decided, for the loss of its micro-batches: every row of the step has a
    generated completion, written by `writer`.

    `writer`: `student` (an on-policy step: the divergence alone, a CE on its own samples would reinforce its
    mistakes) or `teacher` (`seq_kd`: the whole loss); `step`: the optimizer step, counted from 0."""

    writer: str
    step: int


def step_writer(config, step: int) -> str | None:
    """Who writes the completions of optimizer step `step` (counted from 0): `student` (an on-policy step, drawn with
    probability `lmbda` from `seed` and `step` alone, so every process and a resumed run draw the same), `teacher`
    (`seq_kd` on the other steps) or None (the dataset's)."""
    if config.lmbda > 0 and np.random.default_rng([config.seed, step]).random() < config.lmbda:
        return "student"
    return "teacher" if config.seq_kd else None


def prompts(batch: dict) -> list[list[int]]:
    """Each row's prompt (`hf_distill.data.datasets.split_prompt`), padding left out."""
    rows = []
    for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
        length = int(mask.sum())
        prompt, _ = split_prompt(ids[:length].tolist(), labels[:length].tolist())
        if not prompt:
            raise UserInputError(
                "training example without a prompt",
                "dataset_format",
                "its first token is already a target (as in dataset_format 'text'), and on-policy and seq_kd steps "
                "generate from a prompt",
                "use prompt_completion, messages or prompt data",
            )
        rows.append(prompt)
    return rows


def completion_batch(batch: dict, prompt_ids: list[list[int]], completions: Completions, pad_id: int) -> dict:
    """`batch` with each row's completion replaced by a generated one (right-padded; targets: the completion)."""
    rows = [p + c for p, c in zip(prompt_ids, completions.tokens)]
    width = max(len(r) for r in rows)
    labels = [
        [IGNORE_INDEX] * len(p) + c + [IGNORE_INDEX] * (width - len(p) - len(c))
        for p, c in zip(prompt_ids, completions.tokens)
    ]
    device = batch["input_ids"].device
    new = dict(batch)
    new["input_ids"] = torch.tensor([r + [pad_id] * (width - len(r)) for r in rows], device=device)
    new["attention_mask"] = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
    new["labels"] = torch.tensor(labels, device=device)
    return new


class StepGenerator:
    """Writes the completions of a run's generating steps and keeps their statistics for the training logs.

    Args:
        config: the run's `DistillConfig` (`lmbda`, `seq_kd`, `seed`).
        accelerator: the trainer's; the statistics are summed over its processes.
        backend: the run's generation backend (`hf_distill.generation.backends`), which writes the completions and
            knows the tokenizer and its padding token.
    """

    def __init__(self, config, accelerator, backend):
        self.config, self.accelerator, self.backend = config, accelerator, backend
        self.tokenizer, self.pad_id = backend.tokenizer, backend.pad_id
        # Sequences, completion tokens, truncated sequences, the teacher's log-probability summed over those tokens.
        self._sums = torch.zeros(4, device=accelerator.device)
        self._steps = self._on_policy_steps = 0

    def __call__(self, batches: list[dict], step: int) -> tuple[list[dict], GeneratedStep | None]:
        """The micro-batches of optimizer step `step`, with generated completions when the step generates, and what
        the step decided (None: the dataset's completions)."""
        self._steps += 1
        writer = step_writer(self.config, step)
        if writer is None:
            return batches, None
        self._on_policy_steps += writer == "student"
        prompt_ids = [prompts(batch) for batch in batches]
        generated = []
        for batch, rows, completions in zip(batches, prompt_ids, self.backend.complete(writer, prompt_ids, step)):
            counts = [len(rows), sum(map(len, completions.tokens)), sum(completions.truncated)]
            self._sums[:3] += torch.tensor(counts, dtype=self._sums.dtype, device=self._sums.device)
            generated.append(completion_batch(batch, rows, completions, self.pad_id))
        return generated, GeneratedStep(writer, step)

    def record(self, batch: dict, generated: GeneratedStep, terms, logging_steps: int, run_files) -> None:
        """One generated micro-batch's loss terms (`DistillationTerms`): the teacher's log-probabilities of its
        tokens, and with `log_completions` on a logged step its rows of `completions.csv`, gathered from every process
        (a collective: call on all) and written by `run_files` on the main process."""
        self._sums[3] += terms.teacher_logprob.sum().to(self._sums.device)
        step = generated.step + 1  # as the logs count steps
        if self.config.log_completions and step % logging_steps == 0:
            kd = terms.per_example()["kd"]
            rows = gather_object(completion_rows(batch, generated.writer, kd, self.tokenizer, step))
            if self.accelerator.is_main_process:
                run_files.add_completions(rows)

    def window_logs(self) -> dict[str, float]:
        """The statistics since the last call, over every process (a collective: call on all)."""
        sums = (
            self.accelerator.reduce(self._sums.clone(), reduction="sum")
            if self.accelerator.num_processes > 1
            else self._sums
        )
        sequences, tokens, truncated, logprob = sums.tolist()
        logs = {ON_POLICY_FRACTION: self._on_policy_steps / max(self._steps, 1)}
        if sequences:
            logs.update({COMPLETION_LENGTH: tokens / sequences, TRUNCATED_FRACTION: truncated / sequences})
            logs[TEACHER_LOGPROB] = logprob / max(tokens, 1)
        logs.update(self.backend.window_logs())
        self._sums.zero_()
        self._steps = self._on_policy_steps = 0
        return logs


def completion_rows(batch: dict, writer: str, kd: torch.Tensor, tokenizer, step: int) -> list[dict]:
    """`completions.csv` rows of a generated micro-batch: prompt and completion text, per-token KD (`kd`: the
    per-example sums), and whether the completion was cut."""
    rows = []
    ids = batch.get("id") or [None] * len(kd)
    for row, (input_ids, labels, example_kd) in enumerate(zip(batch["input_ids"], batch["labels"], kd.tolist())):
        prompt, completion = split_prompt(input_ids.tolist(), labels.tolist())
        rows.append(
            {
                "step": step,
                "id": ids[row],
                "writer": writer,
                "prompt": tokenizer.decode(prompt),
                "completion": tokenizer.decode(completion),
                "tokens": len(completion),
                "kd_loss": example_kd / len(completion),
                "truncated": completion[-1] != tokenizer.eos_token_id,
            }
        )
    return rows
