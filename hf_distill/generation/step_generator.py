"""On-policy and sequence-level distillation: which optimizer steps generate, and the batches they train on.

A generating step replaces each micro-batch's completions by generated ones: every row keeps its prompt (its tokens
before its last run of target labels; all of them when it has none) and gets a completion written by the student
(on-policy, GKD) or by the teacher (sequence-level KD), whose tokens become the row's targets. The new batch is laid
out like `DistillDataCollator` lays out a dataset's (right-padded, -100 outside the completion), so the loss and its
global token count work on it unchanged.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from accelerate.utils import DistributedType, gather_object
from torch import nn
from transformers import GenerationConfig

from ..config import DistillConfig
from ..data.datasets import split_prompt
from ..losses import IGNORE_INDEX
from ..metrics.names import COMPLETION_LENGTH, ON_POLICY_FRACTION, TEACHER_LOGPROB, TRUNCATED_FRACTION
from ..user_errors import UserInputError


@dataclass(frozen=True)
class GeneratedStep:
    """What a generating optimizer step decided, for the loss of its micro-batches: every row of the step has a
    generated completion, written by `writer`.

    `writer`: `student` (an on-policy step: the divergence alone, a CE on its own samples would reinforce its
    mistakes) or `teacher` (`seq_kd`: the whole loss); `step`: the optimizer step, counted from 0."""

    writer: str
    step: int


def step_writer(config: DistillConfig, step: int) -> str | None:
    """Who writes the completions of optimizer step `step` (counted from 0): `student` (an on-policy step, drawn with
    probability `lmbda` from `seed` and `step` alone, so every process and a resumed run draw the same), `teacher`
    (`seq_kd` on the other steps) or None (the dataset's)."""
    if config.lmbda > 0 and np.random.default_rng([config.seed, step]).random() < config.lmbda:
        return "student"
    return "teacher" if config.seq_kd else None


def generation_seed(config: DistillConfig, step: int, process_index: int, micro_batch: int) -> int:
    """The sampling seed of one micro-batch: a function of the run's seed and the batch's place in it, never of a
    global random state (which a resumed run would not share)."""
    return int(np.random.SeedSequence([config.seed, step, process_index, micro_batch]).generate_state(1)[0])


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


@dataclass
class Completions:
    """Generated completions: token ids up to and including the end-of-sequence token, and whether each was cut at
    `max_new_tokens` without one."""

    tokens: list[list[int]]
    truncated: list[bool]


@torch.no_grad()
def generate(
    model: nn.Module,
    prompt_ids: list[list[int]],
    generation_config: GenerationConfig,
    seed: int,
    synced_gpus: bool,
) -> Completions:
    """Complete left-padded `prompt_ids` with `model` in eval mode, sampling from `seed`; the model's training mode
    and the global random state are left as they were."""
    pad, eos = generation_config.pad_token_id, generation_config.eos_token_id
    stops = set(eos) if isinstance(eos, list) else {eos}
    device = next(model.parameters()).device
    width = max(len(p) for p in prompt_ids)
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompt_ids], device=device)
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=device)
    was_training = model.training
    model.eval()
    try:
        # Forked: sampling draws from its own seeded state, and training's dropout and data order see no difference.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], device_type=device.type):
            torch.manual_seed(seed)
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                generation_config=generation_config,
                synced_gpus=synced_gpus,
            )
    finally:
        model.train(was_training)
    completions = Completions([], [])
    for row in out[:, width:].tolist():
        end = next((i + 1 for i, token in enumerate(row) if token in stops), None)
        completions.tokens.append(row[:end])
        completions.truncated.append(end is None and len(row) == generation_config.max_new_tokens)
    return completions


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
        config: the run's `DistillConfig` (`lmbda`, `seq_kd`, the generation settings, `seed`).
        accelerator: the trainer's; its process index seeds sampling, and under FSDP or DeepSpeed with several
            processes generation runs with `synced_gpus` (each rank keeps running forward passes until all are
            done, as sharded parameters need every rank).
        tokenizer: gives the end-of-sequence token (required: generation stops there) and the padding token.
        student: returns the student as generation needs it (unwrapped from DDP; the same module under FSDP2).
        teacher: the teacher model that writes `seq_kd` completions (unwrapped), or None.
    """

    def __init__(self, config, accelerator, tokenizer, student: Callable[[], nn.Module], teacher: nn.Module | None):
        eos = getattr(tokenizer, "eos_token_id", None)
        if eos is None:
            raise UserInputError(
                "tokenizer without an eos_token",
                f"{config.generation_setting}, tokenizer_name_or_path",
                "generated completions stop at the end-of-sequence token",
                "set an eos_token on the tokenizer",
            )
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        self.config, self.accelerator, self.student, self.teacher = config, accelerator, student, teacher
        self.tokenizer = tokenizer
        self.generation_config = config.generation_config
        # The KV cache is a generation setting only: the model's config (read by training forwards) is not touched.
        self.generation_config.update(pad_token_id=pad, eos_token_id=eos, use_cache=True)
        self.pad_id = pad
        self.synced = (
            accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
            and accelerator.num_processes > 1
        )
        # Sequences, completion tokens, truncated sequences, the teacher's log-probability summed over those tokens.
        self._sums = torch.zeros(4, device=accelerator.device)
        self._steps = self._on_policy_steps = 0

    @classmethod
    def build(
        cls, config, accelerator, processing_class, teacher, student: Callable[[], nn.Module]
    ) -> "StepGenerator":
        """The generator of a `DistillTrainer`: its tokenizer (`processing_class`, or its `tokenizer`) is required,
        and `seq_kd` needs the run's teacher (`hf_distill.teachers.protocol.Teacher`) to have a writer, one live
        model."""
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        if tokenizer is None:
            raise UserInputError(
                f"{config.generation_setting} generates completions: pass the tokenizer as processing_class"
            )
        if config.seq_kd and teacher.writer is None:
            raise UserInputError(f"seq_kd=True needs one teacher model to generate, got {len(teacher.models)}")
        return cls(config, accelerator, tokenizer, student, teacher.writer)

    def __call__(self, batches: list[dict], step: int) -> tuple[list[dict], GeneratedStep | None]:
        """The micro-batches of optimizer step `step`, with generated completions when the step generates, and what
        the step decided (None: the dataset's completions)."""
        self._steps += 1
        writer = step_writer(self.config, step)
        if writer is None:
            return batches, None
        self._on_policy_steps += writer == "student"
        model = self.student() if writer == "student" else self.teacher
        generated = []
        for index, batch in enumerate(batches):
            prompt_ids = prompts(batch)
            seed = generation_seed(self.config, step, self.accelerator.process_index, index)
            completions = generate(model, prompt_ids, self.generation_config, seed, self.synced)
            counts = [len(prompt_ids), sum(map(len, completions.tokens)), sum(completions.truncated)]
            self._sums[:3] += torch.tensor(counts, dtype=self._sums.dtype, device=self._sums.device)
            generated.append(completion_batch(batch, prompt_ids, completions, self.pad_id))
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
