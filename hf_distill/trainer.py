"""`DistillTrainer`: `transformers.Trainer` with a teacher and a distillation loss."""

import dataclasses
import inspect
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from accelerate.utils import gather_object
from torch import nn
from transformers import PreTrainedModel, Trainer

from .arguments.trainer_options import checked_trainer_kwargs
from .config import DistillConfig
from .data.cross_tokenization import CROSS_COLUMNS
from .data.datasets import CACHE_COLUMNS, DistillDataCollator, model_inputs
from .generation.backends import build_backend
from .generation.eval_answers import generation_metrics
from .generation.step_generator import GeneratedStep, StepGenerator
from .losses import IGNORE_INDEX, dense_distillation_terms, fused_distillation_loss
from .losses.divergences import mix
from .metrics.names import CE_LOSS, KD_LOSS, LOSS, PERPLEXITY, TEACHER_AGREEMENT, distill_objective, prefixed
from .metrics.names import TERMS as _EVAL_SUMS
from .models.hidden_states import final_hidden_states, fused_loss_path, lm_head
from .models.loading import load_teacher_tokenizer, load_teachers
from .run.checkpoints import resume_point, save_complete_checkpoint
from .run.lock import run_lock
from .run.logs import RunFilesCallback
from .run.model_card import write_model_card
from .run.nonfinite_guard import NonFiniteGuard
from .run.signals import StopOnSignal
from .teachers.build import build_teacher
from .teachers.context_length import check_batch_length, teacher_contexts
from .teachers.numerics import check_teacher_finite
from .teachers.placement import is_deepspeed_zero3
from .user_errors import UserInputError


class DistillTrainer(Trainer):
    """A `transformers.Trainer` that distills `teacher_model` into `model`.

    Every argument of `Trainer` works unchanged (a fine-tuning script becomes a distillation script by swapping the
    class and adding a teacher). `args` must be a [`DistillConfig`].

    Args:
        teacher_model (`PreTrainedModel`, `str` or a list of them, *optional*):
            The teacher, or its hub id / local folder (loaded with `args.teacher_model_init_kwargs`). Defaults to
            `args.teacher_model_name_or_path`. Ignored, and never loaded, when `args.alpha == 1.0`; refused with
            `args.teacher_cache_dir` or `args.use_teacher_server` (the cache or the server is then the teacher). A
            list is an ensemble, combined as `args.teacher_ensemble` says with `args.teacher_weights`. Built once
            into `self.teacher`, a `hf_distill.teachers.protocol.Teacher`.
        teacher_tokenizer (*optional*):
            The teacher's own tokenizer, with `args.cross_tokenizer` only. Defaults to the one
            `args.teacher_tokenizer_name_or_path` (or the teacher's folder) holds, loaded with the teacher's
            `trust_remote_code`.

    The loss of an optimizer step is `alpha * CE + (1 - alpha) * T**2 * D(teacher || student)`, each term summed over
    the valid tokens of every micro-batch and divided by the valid tokens of the whole step across processes, so the
    result does not depend on how the batch is split into micro-batches or processes.
    """

    # compute_loss divides by the token count of the whole optimizer step already; Trainer must not divide again by
    # the number of accumulation steps.
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model: PreTrainedModel | nn.Module | None = None,
        args: DistillConfig | None = None,
        *trainer_args: Any,
        teacher_model: PreTrainedModel | str | list[PreTrainedModel | str] | None = None,
        teacher_tokenizer: Any = None,
        **trainer_kwargs: Any,
    ):
        if not isinstance(args, DistillConfig):
            raise TypeError(f"args must be a DistillConfig, got {type(args).__name__}")
        # The signature of the trainer built next (Trainer's, or SFTTrainer's in `hf_distill.trl_sft`) tells which
        # argument is which, however a drop-in script passes them (positionally, by keyword, or both); they then all
        # go on by keyword.
        bound = inspect.signature(super().__init__).bind(model, args, *trainer_args, **trainer_kwargs)
        trainer_kwargs = {k: v for k, v in bound.arguments.items() if k not in ("model", "args")}
        trainer_kwargs = checked_trainer_kwargs(args, trainer_kwargs)

        # A teacher given by path is loaded with `args.teacher_model_init_kwargs` alone: the trainer knows no student
        # model arguments (`loading.teacher_init_kwargs`).
        if teacher_model is not None and args.teacher_source in ("cache", "server"):
            setting = "use_teacher_server=True" if args.teacher_source == "server" else "teacher_cache_dir"
            raise UserInputError(
                "teacher model that would be ignored",
                f"DistillTrainer(teacher_model=...), {setting}",
                f"the teacher's side comes from the {args.teacher_source}, so the model passed would never run",
                f"drop teacher_model, or unset {setting.split('=')[0]}",
            )
        teachers = load_teachers(args, teacher_model=teacher_model) if args.teacher_source == "model" else None
        if args.uses_cross_tokenizer and teacher_tokenizer is None:
            teacher_tokenizer = load_teacher_tokenizer(args)
        self._init_base_trainer(model, args, **trainer_kwargs)
        # Wrapper -> unwrapped model (`_unwrap`).
        self._unwrapped: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        student, tokenizer = (
            self._unwrap(self.model),
            getattr(self.processing_class, "tokenizer", self.processing_class),
        )
        # What the run is, decided once: the teacher, the loss's options, the loss path and who generates.
        self.teacher = build_teacher(
            args, teachers, student, tokenizer, self.accelerator, self._unwrap, teacher_tokenizer
        )
        self._spec = args.divergence_spec
        # The divergence alone on the student's own samples: a CE there would reinforce its mistakes.
        self._on_policy_spec = dataclasses.replace(self._spec, alpha=0.0)
        zero3 = is_deepspeed_zero3(self.accelerator)
        self.fused_loss = fused_loss_path(self.teacher, self.model, self._unwrap, args.loss_chunk_size, zero3)
        self._backend = self._generator = self._generated = None
        if args.generates or args.eval_generate:
            current_student = lambda: self._unwrap(self.model)  # noqa: E731 (the model is wrapped later)
            self._backend = build_backend(args, self.accelerator, self.processing_class, self.teacher, current_student)
        if args.generates:
            self._generator = StepGenerator(args, self.accelerator, self._backend)

        self._teacher_contexts = teacher_contexts([self._unwrap(m) for m in self.teacher.models])
        self._train_sums = torch.zeros(2, device=self.args.device)
        self._train_window_start: int | None = None
        self._eval_sums = torch.zeros(len(_EVAL_SUMS), device=self.args.device)
        self._step_ids: list = []
        self.add_callback(NonFiniteGuard(self, self.args.max_nonfinite_steps))
        self._target_tokens_seen = torch.zeros((), dtype=torch.long, device=self.args.device)
        self._run_files = RunFilesCallback(
            self.accelerator,
            self.args.output_dir,
            self.target_tokens_seen,
            write_metrics=args.metrics_csv,
            eval_in_order=self.args.train_sampling_strategy != "group_by_length",
        )
        self.add_callback(self._run_files)

    def _init_base_trainer(self, model, args: DistillConfig, **trainer_kwargs) -> None:
        # The next trainer's own __init__ (Trainer's, or SFTTrainer's, which `hf_distill.trl_sft` wraps).
        super().__init__(model, args, **trainer_kwargs)

    @property
    def teacher_model(self) -> nn.Module | list[nn.Module] | None:
        """The live teacher model as placed for the engine, an ensemble's members, or None (no teacher, or a cache)."""
        models = self.teacher.models
        return None if not models else models[0] if len(models) == 1 else models

    # ---- checkpoints ----

    def _save_checkpoint(self, model, trial):
        save_complete_checkpoint(self, trial, lambda: super(DistillTrainer, self)._save_checkpoint(model, trial))

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """`Trainer.train`; `resume_from_checkpoint=True` takes the last *complete* checkpoint in `output_dir`.

        The main process holds the lock of `output_dir` while it trains (`hf_distill.run.lock`). SIGTERM or SIGINT
        finish the step, save a checkpoint and exit 143 or 130 (`hf_distill.run.signals`)."""
        resume_from_checkpoint = resume_point(
            self.args.output_dir, resume_from_checkpoint, self._unwrap(self.model).config
        )
        stop = StopOnSignal(self)
        with run_lock(self.args.output_dir, enabled=self.is_world_process_zero()), stop:
            output = super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        stop.exit_if_signalled()
        return output

    def _run_epoch(self, *args, **kwargs):
        # Trainer checks max_steps only after an optimizer step: resumed from a checkpoint at max_steps (a run killed
        # after its last checkpoint, in the final evaluation or save) it would train one step past the end.
        if 0 < self.state.max_steps <= self.state.global_step:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    def step_example_ids(self) -> list:
        """Ids of the examples of the current optimizer step, from every process (a collective: call on all)."""
        return [i for ids in gather_object([self._step_ids]) for i in ids]

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        # Our collator carries example ids through to the per-example statistics, and a cached teacher (or the tokens
        # and spans of a teacher with its own tokenizer) to the loss; other collators never see them.
        if isinstance(self.data_collator, DistillDataCollator) and "id" not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, "id", *CACHE_COLUMNS, *CROSS_COLUMNS]

    # ---- loss ----

    def get_batch_samples(
        self, epoch_iterator: Iterator, num_batches: int, device: torch.device
    ) -> tuple[list, torch.Tensor | None]:
        """Collect the micro-batches of one optimizer step, generate their completions when the step generates, and
        count their target tokens across all processes."""
        batch_samples = []
        for _ in range(num_batches):
            try:
                batch_samples.append(next(epoch_iterator))
            except StopIteration:
                break
        self._step_ids = [i for batch in batch_samples for i in batch.get("id") or []]
        if not batch_samples or "labels" not in batch_samples[0]:
            return batch_samples, None
        if self._generator is not None:
            # Counted after generation: the divisor is the step's generated completion tokens.
            batch_samples, self._generated = self._generator(batch_samples, self.state.global_step)
        # The logits at position i predict the token at i + 1, so position 0 of each row is never a target.
        count = sum(batch["labels"][..., 1:].ne(IGNORE_INDEX).sum() for batch in batch_samples).to(device)
        if self.accelerator.num_processes > 1:
            count = self.accelerator.reduce(count, reduction="sum")
        self._target_tokens_seen += count
        # A step without any target token has a zero loss; the floor keeps 0 / 0 from turning it into NaN.
        return batch_samples, count.clamp(min=1)

    def _prepare_inputs(self, inputs: dict[str, torch.Tensor | Any]) -> dict[str, torch.Tensor | Any]:
        """Trainer's, then every batch (training and evaluation) is checked against the teachers' context lengths,
        before any forward pass."""
        inputs = super()._prepare_inputs(inputs)
        if "input_ids" in inputs and self._teacher_contexts:
            positions = inputs.get("position_ids")
            # A padding-free row (TRL's packing) holds several sequences whose positions restart at 0: the teacher
            # reads positions up to the longest of them, not the row's length. A teacher with its own tokenizer
            # reads its own tokens.
            teacher_ids = inputs.get("teacher_input_ids", inputs["input_ids"])
            length = int(positions.max()) + 1 if positions is not None else teacher_ids.shape[-1]
            check_batch_length(length, self._teacher_contexts)
        return inputs

    def target_tokens_seen(self) -> int:
        """Target tokens (labels != -100) of the optimizer steps trained so far, summed over processes."""
        return int(self._target_tokens_seen.item())

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        """`alpha * CE + (1 - alpha) * D`, summed over valid tokens and divided by the optimizer step's token count.

        During evaluation (or whenever `num_items_in_batch` is None) the divisor is this micro-batch's own count.
        """
        # The wrapped module's mode: a DeepSpeed engine's own `training` stays True in evaluation.
        mode = "train" if self._unwrap(model).training else "eval"
        generated: GeneratedStep | None = self._generated if mode == "train" else None
        spec = self._on_policy_spec if generated and generated.writer == "student" else self._spec
        forward_inputs = model_inputs(inputs)
        # Causal LM: the logits at position i predict the token at position i + 1.
        targets, outputs, fused = inputs["labels"][:, 1:], None, self.uses_fused_loss(mode)
        if fused:
            student = self._unwrap(model)
            hidden = final_hidden_states(model, student, forward_inputs)[:, :-1]
        else:
            outputs = model(**forward_inputs)
        with self.accelerator.autocast():
            teacher = self.teacher.side(inputs, forward_inputs, fused=fused, training=mode == "train")
        scored = generated is not None
        if fused:
            chunk = self.args.effective_loss_chunk_size
            terms = fused_distillation_loss(
                hidden, lm_head(student), teacher, targets, spec, chunk, score_targets=scored
            )
        else:
            terms = dense_distillation_terms(outputs.logits[:, :-1], teacher, targets, spec, score_targets=scored)
            self._record_examples(mode, inputs.get("id"), terms.per_example())
        check_teacher_finite(self, teacher, targets, inputs.get("id"), mode)
        if generated:
            logging_steps = self.state.logging_steps or self.args.logging_steps
            self._generator.record(inputs, generated, terms, logging_steps, self._run_files)
        loss = self._step_share(terms, mode, num_items_in_batch)
        return (loss, outputs) if return_outputs else loss

    def _step_share(self, terms, mode: str, num_items_in_batch: torch.Tensor | int | None) -> torch.Tensor:
        """This micro-batch's summed loss as its share of the optimizer step's, logging CE and KD in training."""
        if mode == "train" and num_items_in_batch is not None:
            # Each process holds its share of the step's tokens; DDP averages gradients over processes, so
            # multiplying by their number turns that average back into the sum that the global count divides.
            scale = self.accelerator.num_processes / num_items_in_batch
            self._record_train_metrics(terms.ce.sum().detach() * scale, terms.kd.sum().detach() * scale)
            return terms.loss * scale
        return terms.loss / terms.mask.sum().clamp(min=1)

    def _unwrap(self, model: nn.Module) -> nn.Module:
        """`accelerator.unwrap_model(model)`, looked up once per wrapper (whose inner model never changes): Accelerate
        looks up installed packages on every call (about 1 ms where DeepSpeed is installed), and every micro-batch
        needs the student and each teacher unwrapped."""
        unwrapped = self._unwrapped.get(model)
        if unwrapped is None:
            unwrapped = self._unwrapped[model] = self.accelerator.unwrap_model(model)
        return unwrapped

    def uses_fused_loss(self, mode: str) -> bool:
        """Whether `compute_loss` takes the fused chunked path in `mode` ("train" or "eval")."""
        # Evaluation and per-example training statistics need per-example values, which only the dense path has.
        return mode == "train" and self.fused_loss and "train" not in self.args.track_samples

    def _record_examples(self, mode: str, ids: list | None, terms: dict[str, torch.Tensor]) -> None:
        """Per-example sums of a dense micro-batch: to samples.csv when tracked, and into the evaluation's totals."""
        if mode in self.args.track_samples:
            self._run_files.add_samples(mode, self.state.global_step + (mode == "train"), ids, terms)
        if mode == "eval":
            # Summed after gather_for_metrics, which drops the duplicates that pad an uneven last batch across
            # processes: the sums are global and count each example once.
            per_example = torch.stack([terms[name] for name in _EVAL_SUMS], dim=-1).detach()
            self._eval_sums += self.accelerator.gather_for_metrics(per_example).sum(0).to(self._eval_sums.device)

    # ---- metrics ----

    def _record_train_metrics(self, ce: torch.Tensor, kd: torch.Tensor) -> None:
        if self._train_window_start is None:
            self._train_window_start = self.state.global_step
        self._train_sums += torch.stack([ce, kd]).to(self._train_sums.device)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add `ce_loss` and `kd_loss`, averaged over the logging window exactly like Trainer averages `loss`."""
        if LOSS in logs and self._train_window_start is not None:
            steps = max(self.state.global_step - self._train_window_start, 1)
            sums = self.accelerator.reduce(self._train_sums.clone(), reduction="mean") / steps
            logs[CE_LOSS] = sums[0].item()
            if self.teacher.distills:
                logs[KD_LOSS] = sums[1].item()
            if self._generator is not None:
                logs.update(self._generator.window_logs())
            self._train_sums.zero_()
            self._train_window_start = None
            self._run_files.flush_samples()
        super().log(logs, start_time)

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        """Trainer's loop, with `loss`, `ce_loss`, `kd_loss` and `teacher_agreement` as token-weighted means."""
        self._eval_sums.zero_()
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        self._run_files.flush_samples()
        sums = self._eval_sums  # already summed over processes, batch by batch
        ce, kd, agree, tokens = (sums / sums[-1].clamp(min=1)).tolist()
        if sums[-1] > 0:
            prefix = metric_key_prefix
            output.metrics[prefixed(LOSS, prefix)] = mix(ce, kd, self.args.alpha)
            output.metrics[prefixed(CE_LOSS, prefix)] = ce
            if self.args.label_smoothing_factor == 0:
                # `exp(eval_loss)` (run_clm.py) mixes CE and KD; the perplexity is the CE's (a smoothed CE has none).
                output.metrics[prefixed(PERPLEXITY, prefix)] = torch.tensor(ce, dtype=torch.float64).exp().item()
            if self.teacher.evaluates:
                output.metrics[prefixed(KD_LOSS, prefix)] = kd
                output.metrics[prefixed(TEACHER_AGREEMENT, prefix)] = agree
        if self.args.eval_generate:
            synced_gpus = self.is_fsdp_enabled or self.is_deepspeed_enabled
            answers = generation_metrics(
                lambda prompts: self._backend.answers(
                    prompts,
                    self.args.eval_max_new_tokens,
                    self.args.per_device_eval_batch_size,
                    synced_gpus,
                    self.state.global_step,
                ),
                self._backend.tokenizer,
                dataloader.dataset,
                self.accelerator,
            )
            output.metrics.update({prefixed(name, metric_key_prefix): value for name, value in answers.items()})
        return output

    def hyperparameter_search(self, hp_space=None, compute_objective=None, *args, **kwargs):
        """`Trainer.hyperparameter_search`, whose default objective is `distill_objective`: `eval_loss`, or the sum of
        `compute_metrics`' metrics when it has some, as for Trainer; never hf_distill's own evaluation metrics."""
        objective = distill_objective if compute_objective is None else compute_objective
        return super().hyperparameter_search(hp_space, objective, *args, **kwargs)

    # ---- publishing ----

    def create_model_card(self, *args, dataset_name=None, student_base=None, **kwargs) -> None:
        """Write `output_dir/README.md` stating how the student was distilled (Trainer.push_to_hub calls this).

        Takes `Trainer.create_model_card`'s arguments, positionally or by keyword (its signature binds them);
        `dataset_name` and `student_base` are the same as `dataset` and `finetuned_from`. A PEFT student keeps PEFT's
        metadata (`library_name: peft`, `base_model`).
        """
        card = inspect.signature(Trainer.create_model_card).bind(self, *args, **kwargs).arguments
        del card["self"]
        card["finetuned_from"] = card.get("finetuned_from") or student_base
        card["dataset"] = dataset_name or card.get("dataset")
        if self.is_world_process_zero():
            write_model_card(self, **card)
