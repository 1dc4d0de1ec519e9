"""One training run from parsed arguments: data, models, trainer, train, evaluate, save, card, push."""

import json
import logging
import os
from typing import Any, NamedTuple

from transformers import TrainerCallback, set_seed

from ..arguments.script_arguments import DataArguments, ModelArguments
from ..arguments.training_checks import DEEPSPEED_MISMATCH, deepspeed_mismatch_error
from ..config import DistillConfig
from ..data.datasets import DistillDataCollator, prepare_datasets
from ..models.loading import check_models_fit, load_student, load_teacher_tokenizer, load_teachers, load_tokenizer
from ..run.checkpoints import last_complete_checkpoint
from ..run.final_model import save_final_model
from ..run.lock import check_free, run_lock
from ..run.main_process_first import main_process_first
from ..run.run_arguments import claim_output_dir, mark_finished
from ..teachers.cache_builder import attach_teacher_cache
from ..teachers.cache_store import StoredCache
from ..trainer import DistillTrainer
from .check import check_output_dir, check_run

logger = logging.getLogger(__name__)


class CheckedInputs(NamedTuple):
    """What the checks before any compute read once and hand on: the teacher cache (`check_run`), the tokenizer and
    the teacher's own tokenizer (`cross_tokenizer`)."""

    cache: StoredCache | None
    tokenizer: Any
    teacher_tokenizer: Any


def check_inputs(model_args: ModelArguments, data_args: DataArguments, config: DistillConfig) -> CheckedInputs:
    """Every check of a run's inputs before any data or weight loads: the output folder, the arguments' files,
    tokenizers, model configs and vocabularies (`check_run`, `check_models_fit`)."""
    if config.process_index == 0:
        check_free(config.output_dir)  # another run on this output_dir: refused before anything is loaded
    cache = check_run(model_args, data_args, config)
    tokenizer = load_tokenizer(model_args, config)
    # Loaded once, for the checks, the data and the trainer.
    teacher_tokenizer = load_teacher_tokenizer(config, model_args) if config.uses_cross_tokenizer else None
    check_models_fit(model_args, config, tokenizer, teacher_tokenizer, cache.manifest["top_k"] if cache else None)
    return CheckedInputs(cache, tokenizer, teacher_tokenizer)


def build_trainer(
    model_args: ModelArguments,
    data_args: DataArguments,
    config: DistillConfig,
    callbacks: list[TrainerCallback] | None = None,
    checked: CheckedInputs | None = None,
) -> DistillTrainer:
    """Checks (`check_inputs`, unless `checked` holds what they read), tokenizer, data (with the teacher cache when
    set), teacher and student, and the trainer over them."""
    cache, tokenizer, teacher_tokenizer = checked or check_inputs(model_args, data_args, config)
    set_seed(config.seed)
    train_dataset, eval_dataset = main_process_first(
        lambda: prepare_datasets(
            data_args, tokenizer, prompts_only=config.lmbda == 1.0, teacher_tokenizer=teacher_tokenizer
        )
    )
    if config.uses_teacher_cache:
        train_dataset = attach_teacher_cache(data_args, config, tokenizer, train_dataset, cache)

    # Loaded here rather than by the trainer, which knows no model arguments: the teacher shares the student's
    # attention kernel and remote-code policy (`loading.teacher_init_kwargs`).
    teachers = load_teachers(config, model_args) if config.teacher_source == "model" else None
    student = load_student(model_args, config)

    return DistillTrainer(
        model=student,
        teacher_model=teachers,
        args=config,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        teacher_tokenizer=teacher_tokenizer,
        data_collator=DistillDataCollator(tokenizer, teacher_pad_token_id=_pad_id(teacher_tokenizer)),
        callbacks=callbacks,
    )


def run_training(model_args: ModelArguments, data_args: DataArguments, config: DistillConfig) -> dict:
    """Train, evaluate and save as the HF example scripts do; returns the final metrics.

    The main process holds the lock of `output_dir` from before the models load until the card is written
    (`hf_distill.run.lock`): a second run on it is refused during the final evaluation and save too."""
    check_output_dir(config.output_dir)  # before the lock, which is written into it
    with run_lock(config.output_dir, enabled=config.process_index == 0):
        # A bad input is told as such before the arguments are compared with a run already in output_dir.
        checked = check_inputs(model_args, data_args, config)
        if claim_output_dir(model_args, data_args, config):
            logger.warning(
                f"output_dir={config.output_dir!r} holds this run, finished with these arguments: nothing to do (set "
                "another output_dir, or overwrite_output_dir: true to train it again)"
            )
            return _results(config.output_dir)
        trainer = build_trainer(model_args, data_args, config, checked=checked)
        metrics = _train_evaluate_save(trainer, model_args, data_args, config)
        if config.process_index == 0:
            mark_finished(config.output_dir)
        return metrics


def _results(output_dir: str) -> dict:
    """The final metrics a finished run saved (Trainer's `all_results.json`)."""
    path = os.path.join(output_dir, "all_results.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _train_evaluate_save(trainer: DistillTrainer, model_args, data_args, config: DistillConfig) -> dict:
    eval_dataset = trainer.eval_dataset
    checkpoint = config.resume_from_checkpoint
    if checkpoint is None and os.path.isdir(config.output_dir):
        checkpoint = last_complete_checkpoint(config.output_dir)
        if checkpoint is not None:
            logger.warning(f"resuming from the last checkpoint in output_dir: {checkpoint}")
    try:
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
    except ValueError as err:
        if not str(err).startswith(DEEPSPEED_MISMATCH):
            raise
        lines = [line for line in str(err).splitlines() if line.startswith("- ")]
        raise deepspeed_mismatch_error(config, lines) from None
    metrics = dict(train_result.metrics)
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()

    if eval_dataset is not None:
        last = next((h for h in reversed(trainer.state.log_history) if "eval_loss" in h), {})
        if last.get("step") == trainer.state.global_step:
            # The schedule already evaluated the final weights: a second pass would log the same step twice.
            eval_metrics = {k: v for k, v in last.items() if k.startswith("eval_") or k == "epoch"}
        else:
            eval_metrics = trainer.evaluate()
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)

    if trainer.is_fsdp_enabled:
        # Under SHARDED_STATE_DICT (our FSDP2 configs, for fast checkpoints) save_model writes no weights at all:
        # the published student is gathered into one full state dict.
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    save_final_model(trainer, config.output_dir)
    if trainer.is_world_process_zero():
        trainer.create_model_card(dataset_name=data_args.dataset_name, student_base=_student_base(model_args))
    if config.push_to_hub:
        trainer.push_to_hub(dataset_name=data_args.dataset_name, student_base=_student_base(model_args))
    return metrics


def _pad_id(tokenizer) -> int:
    """The id a teacher tokenizer's sequences are padded with (masked out of attention: any id would do)."""
    if tokenizer is None:
        return 0
    return next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)


def _student_base(model_args: ModelArguments) -> str | None:
    return model_args.model_name_or_path if model_args.student_init == "pretrained" else None
