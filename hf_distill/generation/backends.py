"""The generation backend of a run, resolved once when the trainer is built (`build_backend`): `hf`
(transformers' `generate`, `HFBackend`) or `vllm` (`use_vllm`, `vllm_backend.VLLMBackend`). Both answer the same
three calls, so the steps and the evaluation that generate never ask which one they have:

- `complete(writer, prompts, step)`: the completions of optimizer step `step`'s micro-batches (`prompts`: one list of
  token-id prompts per micro-batch), written by `student` or `teacher`;
- `answers(prompts, max_new_tokens, batch_size, synced_gpus, step)`: `eval_generate`'s greedy answers, decoded;
- `window_logs()`: the backend's own training-log statistics since the last call.

and hold `name`, `tokenizer` and `pad_id`.
"""

from collections.abc import Callable
from typing import Protocol

from accelerate.utils import DistributedType
from torch import nn

from ..user_errors import UserInputError
from .greedy import greedy_generate
from .hf_generate import Completions, generate
from .seeds import generation_seed
from .vllm_backend import VLLMBackend


class GenerationBackend(Protocol):
    name: str
    tokenizer: object
    pad_id: int

    def complete(self, writer: str, prompts: list[list[list[int]]], step: int) -> list[Completions]: ...

    def answers(
        self, prompts: list[list[int]], max_new_tokens: int, batch_size: int, synced_gpus: bool, step: int
    ) -> list[str]: ...

    def window_logs(self) -> dict[str, float]: ...


class HFBackend:
    """transformers' `generate` on the training models themselves: each micro-batch left-padded and sampled from its
    own seed (`seeds.generation_seed`); under FSDP or DeepSpeed with several processes with `synced_gpus` (each rank
    keeps running forward passes until all are done, as sharded parameters need every rank)."""

    name = "hf"

    def __init__(self, config, accelerator, tokenizer, student: Callable[[], nn.Module], teacher, eos: int, pad: int):
        self.config, self.accelerator, self.tokenizer, self.student, self.teacher = (
            config, accelerator, tokenizer, student, teacher,
        )  # fmt: skip
        self.pad_id = pad
        self.generation_config = config.generation_config
        # The KV cache is a generation setting only: the model's config (read by training forwards) is not touched.
        self.generation_config.update(pad_token_id=pad, eos_token_id=eos, use_cache=True)
        self.synced = (
            accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
            and accelerator.num_processes > 1
        )

    def complete(self, writer: str, prompts: list[list[list[int]]], step: int) -> list[Completions]:
        model = self.student() if writer == "student" else self.teacher
        seeds = [generation_seed(self.config, step, self.accelerator.process_index, i) for i in range(len(prompts))]
        return [generate(model, rows, self.generation_config, seed, self.synced) for rows, seed in zip(prompts, seeds)]

    def answers(
        self, prompts: list[list[int]], max_new_tokens: int, batch_size: int, synced_gpus: bool, step: int
    ) -> list[str]:
        model, tokenizer = self.student(), self.tokenizer
        run = greedy_generate(
            model, tokenizer, prompts, max_new_tokens, batch_size, progress=False, synced_gpus=synced_gpus
        )
        return run.texts

    def window_logs(self) -> dict[str, float]:
        return {}


def build_backend(config, accelerator, processing_class, teacher, student: Callable[[], nn.Module]):
    """The backend of a `DistillTrainer` that generates (`config.generates`) or evaluates by generating
    (`eval_generate`): the tokenizer (`processing_class`, or its `tokenizer`) is required, generated completions need
    its end-of-sequence token, and `seq_kd` needs the run's teacher (`hf_distill.teachers.protocol.Teacher`) to have a
    writer, one live model. `student` returns the student as generation needs it (unwrapped from DDP)."""
    setting = config.generation_setting if config.generates else "eval_generate=True"
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    if tokenizer is None:
        what = "completions" if config.generates else "answers"
        raise UserInputError(f"{setting} generates {what}: pass the tokenizer as processing_class")
    if config.seq_kd and teacher.writer is None:
        raise UserInputError(f"seq_kd=True needs one teacher model to generate, got {len(teacher.models)}")
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None and config.generates:
        raise UserInputError(
            "tokenizer without an eos_token",
            f"{setting}, tokenizer_name_or_path",
            "generated completions stop at the end-of-sequence token",
            "set an eos_token on the tokenizer",
        )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    backend = VLLMBackend if config.use_vllm else HFBackend
    return backend(config, accelerator, tokenizer, student, teacher.writer, eos, pad)
