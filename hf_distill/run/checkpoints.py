"""Checkpoints that are complete or ignored: a crash while saving never leaves a checkpoint that resume picks, and a
checkpoint damaged after it was written (a file deleted, truncated or changed) is skipped for the one before."""

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable

from ..user_errors import UserInputError
from .atomic_write import remove_path, write_json_atomically
from .disk_space import raise_if_save_failed, tensor_bytes

logger = logging.getLogger(__name__)

# Written last into a checkpoint folder. Keep the file name: resume finds the checkpoints of earlier runs by it.
CHECKPOINT_MARKER = "checkpoint_complete.json"
TRAINER_STATE = "trainer_state.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Files up to this size get a checksum in the marker (optimizer-free state: scheduler, RNG, trainer state, config);
# larger ones (weights, optimizer) only their size, which a truncation or a deletion changes, so marking stays cheap.
_CHECKSUM_MAX_BYTES = 16 * 2**20


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(checkpoint_dir: str) -> dict[str, dict]:
    """Every file of the checkpoint but the marker, by path relative to it: its size, and a checksum if small."""
    files = {}
    for root, _, names in os.walk(checkpoint_dir):
        for name in names:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, checkpoint_dir)
            if relative == CHECKPOINT_MARKER:
                continue
            size = os.path.getsize(path)
            files[relative] = {"size": size, "sha256": _sha256(path) if size <= _CHECKSUM_MAX_BYTES else None}
    return dict(sorted(files.items()))


def mark_complete(checkpoint_dir: str, step: int) -> None:
    """Written last, atomically (rename), once every file of the checkpoint is on disk: it lists them with their sizes
    (and checksums of the small ones), which `damage` checks before a resume."""
    write_json_atomically(
        os.path.join(checkpoint_dir, CHECKPOINT_MARKER), {"global_step": step, "files": _files(checkpoint_dir)}
    )


def is_complete(checkpoint_dir: str) -> bool:
    return os.path.isfile(os.path.join(checkpoint_dir, CHECKPOINT_MARKER))


def damage(checkpoint_dir: str) -> str | None:
    """What is wrong with a complete checkpoint's files since it was marked (the first problem), or None.

    Markers of earlier versions list no files: those checkpoints are taken as they are, if their trainer state reads.
    """
    try:
        with open(os.path.join(checkpoint_dir, CHECKPOINT_MARKER)) as f:
            recorded = json.load(f).get("files")
    except (OSError, ValueError, AttributeError) as err:
        return f"{CHECKPOINT_MARKER} cannot be read ({err})"
    for name, expected in (recorded or {}).items():
        path = os.path.join(checkpoint_dir, name)
        if not os.path.isfile(path):
            return f"{name} is missing"
        size = os.path.getsize(path)
        if size != expected["size"]:
            return f"{name} has {size} bytes, {expected['size']} when it was written"
        if expected.get("sha256") and _sha256(path) != expected["sha256"]:
            return f"{name} has changed since it was written (checksum)"
    # Read whole by Trainer before anything else: a marker of an earlier version lists no checksum to catch it.
    try:
        with open(os.path.join(checkpoint_dir, TRAINER_STATE)) as f:
            json.load(f)
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as err:
        return f"{TRAINER_STATE} cannot be read ({err})"
    return None


def _checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """`(step, path)` of every checkpoint folder in `output_dir`, oldest step first."""
    if not os.path.isdir(output_dir):
        return []
    found = (
        (int(m.group(1)), os.path.join(output_dir, name))
        for name in os.listdir(output_dir)
        if (m := _CHECKPOINT.match(name))
    )
    return sorted((step, path) for step, path in found if os.path.isdir(path))


def has_complete_checkpoint(output_dir: str) -> bool:
    """Whether `output_dir` holds a checkpoint whose save finished (damaged or not: read nothing, warn of nothing)."""
    return any(is_complete(path) for _, path in _checkpoints(output_dir))


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The checkpoint with the highest step whose save finished and whose files are as they were written; partial
    ones (a crash mid-save) are skipped, damaged ones too, with a warning naming what is damaged. None when
    `output_dir` holds no complete checkpoint; an error when it holds some but every one is damaged (starting over
    would silently throw the run away)."""
    damaged = []
    for _, path in reversed(_checkpoints(output_dir)):
        if not is_complete(path):
            continue
        problem = damage(path)
        if problem is None:
            return path
        logger.warning(f"skipping damaged checkpoint {path}: {problem}; resuming from an earlier one")
        damaged.append(f"{os.path.basename(path)}: {problem}")
    if damaged:
        raise UserInputError(
            "every checkpoint is damaged",
            f"output_dir={output_dir!r}",
            "; ".join(damaged),
            "restore the files, or delete the checkpoints to train from the start",
        )
    return None


def resume_advice(output_dir: str) -> str:
    """What a rerun of the same command does in `output_dir`, as advice to end an error line with."""
    checkpoint = last_complete_checkpoint(output_dir)
    if checkpoint is None:
        return "rerun the same command to start again (no complete checkpoint yet)"
    return f"rerun the same command to resume from {checkpoint}"


def rotate_checkpoints(output_dir: str, save_total_limit: int | None, newest: str, best: str | None) -> None:
    """Keep at most `save_total_limit` complete checkpoints (None or <= 0: all), deleting the oldest steps first.

    Call it once `newest` is marked complete: a crash at any point then leaves `newest` or the complete checkpoints
    before it. `newest` and `best` (the best model checkpoint, which `load_best_model_at_end` reloads) are never
    deleted, so with both and a limit of 1 two remain. Partial checkpoints older than `newest` (left by a crash) go
    too: resume can never pick them, and they would escape the limit.
    """
    if save_total_limit is None or save_total_limit <= 0:
        return
    newest = os.path.abspath(newest)
    protected = {newest} | ({os.path.abspath(best)} if best else set())
    checkpoints = [(step, os.path.abspath(path)) for step, path in _checkpoints(output_dir)]
    newest_step = next(step for step, path in checkpoints if path == newest)
    complete = [path for _, path in checkpoints if is_complete(path)]
    stale = [path for step, path in checkpoints if step < newest_step and not is_complete(path)]
    excess = len(complete) - max(save_total_limit, len(protected.intersection(complete)))
    doomed = [path for path in complete if path not in protected][: max(excess, 0)]
    for path in doomed + [path for path in stale if path not in protected]:
        shutil.rmtree(path, ignore_errors=True)


# Config fields whose values decide the shapes of the weights a checkpoint holds.
_ARCHITECTURE_FIELDS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
)


def check_same_architecture(checkpoint_dir: str, model_config) -> None:
    """Raise a one-line ValueError if the checkpoint's `config.json` describes another architecture than
    `model_config` (the student's): loading it would fail deep in `load_state_dict`, or resume into another model.
    A checkpoint without a readable `config.json` (a PEFT adapter, a sharded engine's folder) is not checked."""
    try:
        with open(os.path.join(checkpoint_dir, "config.json")) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return
    saved_text = saved.get("text_config") or saved
    current = model_config.to_dict()
    current_text = current.get("text_config") or current
    differing = [
        f"{name} {saved_text.get(name, saved.get(name))!r} vs {current_text.get(name, current.get(name))!r}"
        for name in _ARCHITECTURE_FIELDS
        if saved_text.get(name, saved.get(name)) != current_text.get(name, current.get(name))
    ]
    if differing:
        raise UserInputError(
            "checkpoint of another architecture",
            f"resume_from_checkpoint={checkpoint_dir!r}",
            f"it holds another architecture than the student (checkpoint vs student: {', '.join(differing)})",
            "resume with the student it was trained from, or set another output_dir",
        )


def resume_point(output_dir: str, resume_from_checkpoint: str | bool | None, model_config) -> str | None:
    """The checkpoint `Trainer.train(resume_from_checkpoint=...)` resumes from: `True` takes the last complete one in
    `output_dir` (none is an error); a checkpoint of another architecture than `model_config` is refused."""
    if resume_from_checkpoint is True:
        resume_from_checkpoint = last_complete_checkpoint(output_dir)
        if resume_from_checkpoint is None:
            raise UserInputError(
                "no checkpoint to resume from",
                f"resume_from_checkpoint=True, output_dir={output_dir!r}",
                "the folder holds no complete checkpoint",
                "unset resume_from_checkpoint to train from the start",
            )
    if resume_from_checkpoint:
        check_same_architecture(resume_from_checkpoint, model_config)
    return resume_from_checkpoint or None


def save_complete_checkpoint(trainer, trial, save: Callable[[], None]) -> None:
    """Trainer's checkpoint save (`save`), made whole: the folder of a killed save (or one resume skipped as damaged)
    is removed first; a failed save (a full disk) is one line, its partial folder removed; every process has written
    its part before the checkpoint is marked complete; and rotation, which Trainer runs at the end of its own save
    (before the new checkpoint is complete: a crash there could leave none, and rank 0 could delete the old one
    while other ranks still write the new one), counts complete checkpoints only, after the marker."""
    args, accelerator, step = trainer.args, trainer.accelerator, trainer.state.global_step
    run_dir = trainer._get_output_dir(trial=trial)
    path = os.path.join(run_dir, f"checkpoint-{step}")
    if args.should_save and os.path.lexists(path):
        remove_path(path)
    accelerator.wait_for_everyone()
    save_total_limit, args.save_total_limit = args.save_total_limit, None
    failure = None
    try:
        save()
    except Exception as err:
        failure = err
    finally:
        args.save_total_limit = save_total_limit
    raise_if_save_failed(
        accelerator,
        failure,
        what=f"checkpoint-{step}",
        path=path,
        needed=lambda: tensor_bytes(
            [accelerator.unwrap_model(trainer.model).state_dict(), trainer.optimizer.state_dict()]
        ),
        then=lambda: resume_advice(run_dir),
        cleanup=lambda: remove_path(path),
    )
    accelerator.wait_for_everyone()
    if args.should_save:
        mark_complete(path, step)
        rotate_checkpoints(run_dir, save_total_limit, path, trainer.state.best_model_checkpoint)
