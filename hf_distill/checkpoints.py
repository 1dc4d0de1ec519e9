"""Checkpoints that are complete or ignored: a crash while saving never leaves a checkpoint that resume picks."""

import os
import re
import shutil

from .atomic_write import write_json_atomically

# Written last into a checkpoint folder. Keep the file name: resume finds the checkpoints of earlier runs by it.
CHECKPOINT_MARKER = "checkpoint_complete.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def mark_complete(checkpoint_dir: str, step: int) -> None:
    """Written last, atomically (rename), once every file of the checkpoint is on disk."""
    write_json_atomically(os.path.join(checkpoint_dir, CHECKPOINT_MARKER), {"global_step": step})


def is_complete(checkpoint_dir: str) -> bool:
    return os.path.isfile(os.path.join(checkpoint_dir, CHECKPOINT_MARKER))


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


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The checkpoint with the highest step whose save finished; partial ones (a crash mid-save) are skipped."""
    return next((path for _, path in reversed(_checkpoints(output_dir)) if is_complete(path)), None)


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
