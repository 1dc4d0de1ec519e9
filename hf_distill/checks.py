"""`hf-distill check`: validate a recipe without loading any weights."""

import os
from collections.abc import Callable, Collection

from transformers import AutoTokenizer

from .arguments import DataArguments, ModelArguments
from .config import DistillConfig
from .data import FILE_BUILDERS, split_files
from .modeling import check_weight_files, load_causal_lm_config


def _looks_local(name: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else is a local path."""
    return os.path.exists(name) or name.startswith((".", "/", "~")) or name.count("/") > 1


def _check_local(
    name: str, field_name: str, load: Callable[[str, str], object], produced_paths: Collection[str]
) -> None:
    """A local folder must exist and `load(name, field_name)` (a config or tokenizer reader, which raises a one-line
    ValueError naming the field) must read it; a hub id cannot be checked offline and is accepted, and so is a folder
    an earlier round of the recipe will write."""
    if not _looks_local(name) or name in produced_paths:
        return
    if not os.path.isdir(name):
        raise ValueError(f"{field_name}={name!r}: no such folder")
    load(name, field_name)


def _check_dataset(args: DataArguments) -> None:
    name = args.dataset_name
    if os.path.isfile(name):
        if os.path.splitext(name)[1] not in FILE_BUILDERS:
            raise ValueError(f"dataset_name={name!r}: unsupported file type; use one of {sorted(FILE_BUILDERS)}")
        if args.dataset_eval_split not in (None, "train"):
            raise ValueError(f"dataset_eval_split={args.dataset_eval_split!r}: a single file only has a 'train' split")
        return
    if os.path.isdir(name):
        splits = split_files(name)
        if splits:
            for field_name in ("dataset_train_split", "dataset_eval_split"):
                split = getattr(args, field_name)
                if split is not None and split not in splits:
                    raise ValueError(f"{field_name}={split!r}: no such split file in {name!r}; found {sorted(splits)}")
        return
    if _looks_local(name):
        raise ValueError(f"dataset_name={name!r}: no such file or folder")


def check_recipe(
    model_args: ModelArguments,
    data_args: DataArguments,
    config: DistillConfig,
    produced_paths: Collection[str] = (),
) -> None:
    """Raise ValueError on the first problem a run would hit before training; touches no weights.

    `produced_paths` are model folders that an earlier round of the same recipe will write: not checked.
    """
    trust = model_args.trust_remote_code

    def model_config(name, field_name):
        return load_causal_lm_config(name, field_name, trust)

    def model_with_weights(name, field_name):
        check_weight_files(name, field_name, model_config(name, field_name))

    def tokenizer(name, field_name):
        try:
            return AutoTokenizer.from_pretrained(name, trust_remote_code=trust)
        except (OSError, ValueError) as err:
            raise ValueError(f"{field_name}={name!r}: cannot be read ({str(err).splitlines()[0]})") from None

    student = model_with_weights if model_args.student_init == "pretrained" else model_config
    _check_local(model_args.model_name_or_path, "model_name_or_path", student, produced_paths)
    if model_args.tokenizer_name_or_path is not None:
        _check_local(model_args.tokenizer_name_or_path, "tokenizer_name_or_path", tokenizer, produced_paths)
    if config.teacher_source != "none":
        if not config.teacher_paths:
            raise ValueError(f"alpha={config.alpha} needs a teacher: set teacher_model_name_or_path")
        for teacher in config.teacher_paths:
            _check_local(teacher, "teacher_model_name_or_path", model_with_weights, produced_paths)
        if config.teacher_tokenizer_name_or_path is not None:
            name = config.teacher_tokenizer_name_or_path
            _check_local(name, "teacher_tokenizer_name_or_path", tokenizer, produced_paths)
        elif config.uses_cross_tokenizer:
            # The teacher's own tokenizer is read from its folder.
            _check_local(config.teacher_paths[0], "teacher_model_name_or_path", tokenizer, produced_paths)
    _check_dataset(data_args)
    if config.early_stop_patience is not None and data_args.dataset_eval_split is None:
        raise ValueError(f"early_stop_patience={config.early_stop_patience} needs dataset_eval_split")
