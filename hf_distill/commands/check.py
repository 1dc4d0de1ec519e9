"""Checks before any compute. `check_run` holds those that need no model, tokenizer or data, and runs first in
`hf-distill train` (`pipeline.build_trainer`) and in `hf-distill check`; `check_recipe` (`hf-distill check`) adds the
checks train makes when it loads the tokenizer and the data, without loading any weights."""

import os
from collections.abc import Callable, Collection

from transformers import AutoTokenizer

from ..arguments.script_arguments import DataArguments, ModelArguments
from ..arguments.trainer_options import check_trainer_fields
from ..config import DistillConfig
from ..data.datasets import select_splits
from ..data.raw_dataset import load_raw_dataset
from ..models.causal_lm import check_weight_files, load_causal_lm_config, resolve_dtype
from ..models.loading import check_models_fit, load_tokenizer, teacher_init_kwargs
from ..teachers.cache_store import StoredCache, open_cache
from ..user_errors import UserInputError


def _looks_local(name: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else is a local path."""
    return os.path.exists(name) or name.startswith((".", "/", "~")) or name.count("/") > 1


def check_output_dir(path: str) -> None:
    """`output_dir` must be a folder this process can write, or one it can create."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserInputError(
            "output_dir is a file", f"output_dir={path!r}", "the run writes a folder there", "set another output_dir"
        )
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.access(existing, os.W_OK | os.X_OK):
        missing = "" if existing == os.path.abspath(path) else f" (its nearest existing parent {existing!r})"
        raise UserInputError(
            "output_dir is not writable",
            f"output_dir={path!r}",
            f"this user cannot write in it{missing}",
            "set an output_dir you can write in, or fix its permissions",
        )


def check_run(model_args: ModelArguments, data_args: DataArguments, config: DistillConfig) -> StoredCache | None:
    """What a run can be refused for from its arguments and files alone, before any tokenizer, data or model loads:
    the output folder, evaluation without an eval split, the teacher's init kwargs, and a teacher cache's files.
    Returns the teacher cache, read and checked once (None without one)."""
    check_output_dir(config.output_dir)
    check_trainer_fields(config)
    # Also what early_stop_patience needs: DistillConfig refuses it without an eval_strategy.
    strategy = getattr(config.eval_strategy, "value", config.eval_strategy)
    if data_args.dataset_eval_split is None and strategy != "no":
        raise UserInputError(
            "evaluation without an eval split",
            f"eval_strategy={strategy!r}",
            "dataset_eval_split is not set, so there is nothing to evaluate on (Trainer would stop when built)",
            "set dataset_eval_split, or eval_strategy: 'no'",
        )
    if config.teacher_source == "model" and config.teacher_paths:
        resolve_dtype(teacher_init_kwargs(config, model_args))
    return open_cache(config.teacher_cache_dir) if config.uses_teacher_cache else None


def _check_local(
    name: str, field_name: str, load: Callable[[str, str], object], produced_paths: Collection[str]
) -> bool:
    """A local folder must exist and `load(name, field_name)` (a config or tokenizer reader, which raises a one-line
    error naming the field) must read it; a hub id cannot be checked offline and is accepted, and so is a folder
    an earlier round of the recipe will write. Returns whether the folder was checked."""
    if not _looks_local(name) or name in produced_paths:
        return False
    if not os.path.isdir(name):
        raise UserInputError(
            "model folder not found", f"{field_name}={name!r}", "no such folder", "fix the path (a hub id is org/name)"
        )
    load(name, field_name)
    return True


def check_recipe(
    model_args: ModelArguments,
    data_args: DataArguments,
    config: DistillConfig,
    produced_paths: Collection[str] = (),
) -> None:
    """Raise a `UserInputError` on the first problem a run would hit before training; touches no weights.

    `check_run`, the model folders (configs, weight file headers), and, when every model is a local folder, the
    checks train makes with the tokenizer (tokenizers and vocabularies agree); then the local data (files, splits,
    columns of the format). Hub ids, and `produced_paths` (model folders that an earlier round of the same recipe
    will write) are not checked.
    """
    cache = check_run(model_args, data_args, config)
    trust = model_args.trust_remote_code

    def model_config(name, field_name):
        return load_causal_lm_config(name, field_name, trust)

    def model_with_weights(name, field_name):
        check_weight_files(name, field_name, model_config(name, field_name))

    def tokenizer(name, field_name):
        try:
            return AutoTokenizer.from_pretrained(name, trust_remote_code=trust)
        except (OSError, ValueError) as err:
            raise UserInputError(
                "tokenizer cannot be read", f"{field_name}={name!r}", str(err), "fix the path or the tokenizer files"
            ) from None

    student = model_with_weights if model_args.student_init == "pretrained" else model_config
    checked = [_check_local(model_args.model_name_or_path, "model_name_or_path", student, produced_paths)]
    if model_args.tokenizer_name_or_path is not None:
        checked.append(
            _check_local(model_args.tokenizer_name_or_path, "tokenizer_name_or_path", tokenizer, produced_paths)
        )
    # A teacher server is not contacted here: the trainer checks it when it is built (`ServerTeacher.check`).
    if config.teacher_source in ("model", "cache"):
        if not config.teacher_paths:
            raise UserInputError(
                "no teacher",
                f"alpha={config.alpha}",
                "alpha < 1 distils from a teacher",
                "set teacher_model_name_or_path (or alpha: 1.0 for plain fine-tuning)",
            )
        for teacher in config.teacher_paths:
            checked.append(_check_local(teacher, "teacher_model_name_or_path", model_with_weights, produced_paths))
        if config.teacher_tokenizer_name_or_path is not None:
            name = config.teacher_tokenizer_name_or_path
            checked.append(_check_local(name, "teacher_tokenizer_name_or_path", tokenizer, produced_paths))
        elif config.uses_cross_tokenizer:
            # The teacher's own tokenizer is read from its folder.
            checked.append(
                _check_local(config.teacher_paths[0], "teacher_model_name_or_path", tokenizer, produced_paths)
            )
    if all(checked):
        top_k = cache.manifest["top_k"] if cache else None
        check_models_fit(model_args, config, load_tokenizer(model_args, config), cache_top_k=top_k)
    if _looks_local(data_args.dataset_name):
        select_splits(load_raw_dataset(data_args), data_args, prompts_only=config.lmbda == 1.0)
