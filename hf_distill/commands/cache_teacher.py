"""`hf-distill cache-teacher RECIPE.yaml --output_dir DIR --top_k K [--shard_size N]`: the recipe's teacher's top-k
log-probabilities of every target token of its train split, written to DIR for training with `teacher_cache_dir: DIR`.
The layout of the cache and the computation of its rows are `hf_distill.teachers.cache_builder`'s."""

import glob
import os
import shutil

from ..arguments.script_arguments import DataArguments, ModelArguments
from ..config import DistillConfig
from ..data.datasets import prepare_datasets
from ..models.loading import check_models_fit, load_teachers, load_tokenizer
from ..run.atomic_write import temporary_path, write_json_atomically
from ..run.main_process_first import main_process_first
from ..teachers.cache_builder import cache_size_report, check_manifest, expected_manifest, write_shard
from ..teachers.cache_store import MANIFEST, read_manifest, shard_path
from ..teachers.live import LiveTeacher, check_member_vocabularies
from ..user_errors import UserInputError, bad_value


def build_teacher_cache(
    model_args: ModelArguments,
    data_args: DataArguments,
    config: DistillConfig,
    cache_dir: str,
    top_k: int,
    shard_size: int = 1000,
) -> str:
    """Write (or finish) the cache of the recipe's train split in `cache_dir`, this process's share of its shards.

    Returns a one-line report: the process's shards and, from the main process, the cache's size on disk."""
    for flag, value in (("top_k", top_k), ("shard_size", shard_size)):
        if value < 1:
            raise bad_value(f"--{flag}", value, "must be >= 1", f"pass --{flag} 1 or more")
    teachers = config.teacher_paths
    if config.alpha == 1.0 or not teachers:
        raise UserInputError(
            "cache-teacher needs a teacher",
            f"alpha={config.alpha}, teacher_model_name_or_path={config.teacher_model_name_or_path!r}",
            "the recipe loads no teacher to cache",
            "set teacher_model_name_or_path and alpha < 1",
        )
    if config.cross_tokenizer != "off":
        raise UserInputError(
            "cache-teacher with a teacher of another tokenizer",
            f"cross_tokenizer={config.cross_tokenizer!r}",
            "the cache holds top-k ids of the student's vocabulary",
            "train with the live teacher",
        )
    tokenizer = load_tokenizer(model_args, config)
    if top_k > len(tokenizer):
        raise bad_value(
            "--top_k",
            top_k,
            f"the tokenizer has {len(tokenizer)} tokens, so a token has at most {len(tokenizer)} alternatives",
            f"pass --top_k {len(tokenizer)} or less",
        )
    check_models_fit(model_args, config, tokenizer)
    train_dataset, _ = main_process_first(lambda: prepare_datasets(data_args, tokenizer))
    manifest = {**expected_manifest(data_args, config, tokenizer, train_dataset), "top_k": top_k}
    manifest.update(num_examples=len(train_dataset), shard_size=shard_size)
    manifest_path = os.path.join(cache_dir, MANIFEST)
    # Every process checks a manifest that is already there, so a mismatch stops all of them alike.
    if os.path.exists(manifest_path):
        found = read_manifest(cache_dir)
        check_manifest(found, manifest, cache_dir)
        for key in ("top_k", "shard_size"):
            if found[key] != manifest[key]:
                raise UserInputError(
                    "cache started with other settings",
                    f"--output_dir {cache_dir}",
                    f"it was started with --{key} {found[key]}, not {manifest[key]}",
                    f"rerun with --{key} {found[key]}, or build into another folder",
                )
    state = config.distributed_state
    if state.is_main_process:
        if not os.path.exists(manifest_path):
            os.makedirs(cache_dir, exist_ok=True)
            write_json_atomically(manifest_path, manifest)
        # Leftovers of a killed build: never renamed, so never part of the cache.
        for leftover in glob.glob(temporary_path(os.path.join(cache_dir, "*"))):
            shutil.rmtree(leftover, ignore_errors=True)
    # No process starts a shard before the leftovers are gone.
    state.wait_for_everyone()

    n_shards = -(-len(train_dataset) // shard_size)
    mine = range(state.process_index, n_shards, state.num_processes)
    todo = [index for index in mine if not os.path.isdir(shard_path(cache_dir, index))]
    if todo:
        teacher = _load_teacher(model_args, config, len(tokenizer))
        for index in todo:
            rows = train_dataset.select(range(index * shard_size, min((index + 1) * shard_size, len(train_dataset))))
            write_shard(teacher, rows, top_k, config.per_device_eval_batch_size, tokenizer, cache_dir, index)
    report = f"process {state.process_index} of {state.num_processes}: shards {list(mine)}, {len(todo)} written"
    state.wait_for_everyone()
    if state.is_main_process:
        report += f"; {cache_size_report(cache_dir)}"
    return report


def _load_teacher(model_args: ModelArguments, config: DistillConfig, vocab_size: int):
    members = [member.eval().to(config.device) for member in load_teachers(config, model_args)]
    check_member_vocabularies(members)
    # Cached at temperature 1 (`LiveTeacher.log_probs`); training softens the cached distribution by its own T.
    return LiveTeacher(members, config.ensemble_weights(len(members)), config.teacher_ensemble, vocab_size)
