"""What `DistillTrainer` does with `Trainer`'s own arguments before building: refuse the ones whose meaning it would
change or ignore, and add the callbacks its config asks for. `args` is a `DistillConfig` (typed by its base class:
the config imports this package)."""

from typing import Any

from transformers import EarlyStoppingCallback, TrainingArguments

from ..user_errors import UserInputError


def check_trainer_fields(args: TrainingArguments) -> None:
    """`TrainingArguments` fields whose meaning `DistillTrainer` would change, refused: by the trainer when it is
    built, and by `hf-distill train` and `check` (`checks.check_run`) before any model loads."""
    if args.label_names not in (None, ["labels"]):
        raise UserInputError(
            "label_names other than labels",
            f"label_names={args.label_names}",
            "DistillTrainer reads the targets from the batch's 'labels'",
            "name that column 'labels' and leave label_names unset",
        )
    if not args.average_tokens_across_devices and args.world_size > 1:
        raise UserInputError(
            "per-process token average",
            "average_tokens_across_devices=False",
            "DistillTrainer always divides by the step's target tokens across processes (the result then does not "
            "depend on how the batch is split)",
            "leave it True",
        )
    check_unsupported_arguments(args)


def checked_trainer_kwargs(args: TrainingArguments, trainer_kwargs: dict[str, Any]) -> dict[str, Any]:
    """`trainer_kwargs` (Trainer's arguments by name) checked against `args`, with early stopping's callback added;
    errors name the argument and its value."""
    trainer_kwargs = dict(trainer_kwargs)
    if trainer_kwargs.get("compute_loss_func") is not None:
        raise UserInputError(
            "compute_loss_func is not used by DistillTrainer, whose loss is alpha * CE + (1 - alpha) * KD; "
            "subclass DistillTrainer and override compute_loss to change it"
        )
    check_trainer_fields(args)
    if args.early_stop_patience is not None:
        if trainer_kwargs.get("eval_dataset") is None:
            raise UserInputError(f"early_stop_patience={args.early_stop_patience} needs an eval_dataset")
        trainer_kwargs["callbacks"] = [
            *(trainer_kwargs.get("callbacks") or []),
            EarlyStoppingCallback(args.early_stop_patience, args.early_stop_min_delta),
        ]
    return trainer_kwargs


def check_unsupported_arguments(args: TrainingArguments) -> None:
    """Refuse the `TrainingArguments` that DistillTrainer would silently override or that change the model or the
    batch in ways its loss was not built for (`docs/trainer_arguments.md` has the whole list); errors name the field
    and its value."""
    if args.use_liger_kernel:
        raise UserInputError(
            "unsupported Trainer option",
            "use_liger_kernel=True",
            "Liger patches the student's forward (a fused linear cross-entropy) and layers, which DistillTrainer's "
            "own chunked loss replaces and was not tested with",
            "set use_liger_kernel: false",
        )
    if args.enable_jit_checkpoint:
        raise UserInputError(
            "unsupported Trainer option",
            "enable_jit_checkpoint=True",
            "DistillTrainer handles SIGTERM itself (finishes the step, saves a checkpoint and exits 143), replacing "
            "Trainer's JIT checkpoint handler",
            "leave enable_jit_checkpoint unset",
        )
    parallelism = args.parallelism_config
    for name in ("tp_size", "cp_size", "sp_size"):
        size = getattr(parallelism, name, None) or 1
        if size > 1:
            # The teacher is not split alike, and the loss's token count assumes whole sequences on each process.
            raise UserInputError(
                "unsupported Trainer option",
                f"parallelism_config.{name}={size}",
                "tensor, context and sequence parallelism are not supported by DistillTrainer",
                "use DDP, FSDP2 or DeepSpeed",
            )
