"""A run knows its own arguments: `output_dir/run_arguments.json` holds, from the run's start, every argument that
shapes what is trained (and their hash), and whether the run finished. A rerun into the same folder with other such
arguments is refused with the changed fields (once the folder holds a checkpoint to resume from); one with the same
arguments resumes, or, when the run finished, says so and rewrites nothing (a model card must never describe
arguments that did not train the weights)."""

import dataclasses
import hashlib
import json
import os

from ..user_errors import UserInputError
from .atomic_write import remove_path, write_json_atomically
from .checkpoints import has_complete_checkpoint
from .lock import LOCK_NAME

RUN_ARGUMENTS = "run_arguments.json"
# Fields that change no trained weight: where and how often a run writes, logs, evaluates and reports, and how a
# resume or publication is asked for. Every other field shapes the result (a new field counts until it is listed).
NOT_SHAPING = frozenset(
    {
        "output_dir",
        "overwrite_output_dir",
        "resume_from_checkpoint",
        "logging_steps",
        "logging_strategy",
        "logging_first_step",
        "logging_nan_inf_filter",
        "log_level",
        "log_level_replica",
        "log_on_each_node",
        "report_to",
        "run_name",
        "project",
        "trackio_space_id",
        "trackio_bucket_id",
        "trackio_static_space_id",
        "save_steps",
        "save_strategy",
        "save_total_limit",
        "save_on_each_node",
        "save_only_model",
        "push_to_hub",
        "hub_model_id",
        "hub_strategy",
        "hub_token",
        "hub_private_repo",
        "hub_always_push",
        "hub_revision",
        "disable_tqdm",
        "skip_memory_metrics",
        "metrics_csv",
        "track_samples",
        "log_completions",
        "dataloader_num_workers",
        "dataloader_pin_memory",
        "dataloader_persistent_workers",
        "dataloader_prefetch_factor",
        "ddp_timeout",
        "local_rank",
        "debug",
        "per_device_eval_batch_size",
        "eval_accumulation_steps",
        "eval_do_concat_batches",
        "eval_use_gather_object",
        "batch_eval_metrics",
        "eval_generate",
        "eval_max_new_tokens",
    }
)


def shaping_arguments(model_args, data_args, config) -> dict:
    """The arguments that shape what a run trains, as JSON values: every field of the three argument classes but
    `NOT_SHAPING`, and the number of processes (the global batch)."""
    fields = {**dataclasses.asdict(model_args), **dataclasses.asdict(data_args), **config.to_dict()}
    shaping = {name: value for name, value in sorted(fields.items()) if name not in NOT_SHAPING}
    shaping["num_processes"] = config.world_size
    # JSON's own reading of every value (tuples as lists, enums and dtypes as strings): what a file read back holds.
    return json.loads(json.dumps(shaping, default=str))


def _digest(arguments: dict) -> str:
    return hashlib.sha256(json.dumps(arguments, sort_keys=True).encode()).hexdigest()


def _read(path: str) -> dict | None:
    try:
        with open(path) as f:
            recorded = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as err:
        raise UserInputError(
            "run arguments cannot be read",
            path,
            str(err),
            "delete the file to resume the run as it is, or set overwrite_output_dir: true to start anew",
        ) from None
    return recorded if isinstance(recorded, dict) and isinstance(recorded.get("arguments"), dict) else None


def _shown(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def claim_output_dir(model_args, data_args, config) -> bool:
    """Record this run's arguments in `output_dir`, or check them against the run already there. Returns whether that
    run finished with the same arguments (then nothing is to be done). Call on every process, under the run lock;
    only the main process writes. `overwrite_output_dir` deletes what `output_dir` holds (the lock excepted) first."""
    arguments = shaping_arguments(model_args, data_args, config)
    path = os.path.join(config.output_dir, RUN_ARGUMENTS)
    if config.overwrite_output_dir and os.path.isdir(config.output_dir):
        if config.process_index == 0:
            for entry in os.listdir(config.output_dir):
                if entry != LOCK_NAME:
                    remove_path(os.path.join(config.output_dir, entry))
        # No process looks for a checkpoint to resume before the earlier run's are gone.
        config.distributed_state.wait_for_everyone()
    recorded = _read(path)
    if recorded is not None and not recorded.get("finished") and not has_complete_checkpoint(config.output_dir):
        # A run refused or stopped before its first checkpoint left nothing to resume: this one starts it anew.
        recorded = None
    if recorded is not None:
        changed = sorted(
            name
            for name in {*arguments, *recorded["arguments"]}
            if arguments.get(name) != recorded["arguments"].get(name)
        )
        if changed:
            diff = ", ".join(
                f"{name}: {_shown(recorded['arguments'].get(name))} -> {_shown(arguments.get(name))}"
                for name in changed[:6]
            )
            raise UserInputError(
                "output_dir holds a run with other arguments",
                f"output_dir={config.output_dir!r}",
                f"{diff}{', ...' if len(changed) > 6 else ''} ({len(changed)} changed); resuming would train on other "
                "arguments than the run's",
                "set another output_dir, or overwrite_output_dir: true to delete that run and start anew",
            )
        if recorded.get("finished"):
            return True
    if config.process_index == 0 and (recorded is None or recorded.get("sha256") != _digest(arguments)):
        os.makedirs(config.output_dir, exist_ok=True)
        write_json_atomically(path, {"sha256": _digest(arguments), "finished": False, "arguments": arguments})
    return False


def mark_finished(output_dir: str) -> None:
    """The run in `output_dir` saved its model and card: a rerun with the same arguments has nothing to do."""
    path = os.path.join(output_dir, RUN_ARGUMENTS)
    recorded = _read(path)
    if recorded is not None:
        write_json_atomically(path, {**recorded, "finished": True})
