"""Checkpoints that are complete or ignored: a crash while saving never leaves a checkpoint that resume picks."""

import json
import os
import re

COMPLETE_MARKER = "checkpoint_complete.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def mark_complete(checkpoint_dir: str, step: int) -> None:
    """Written last, atomically (rename), once every file of the checkpoint is on disk."""
    tmp = os.path.join(checkpoint_dir, f".{COMPLETE_MARKER}.tmp")
    with open(tmp, "w") as f:
        json.dump({"global_step": step}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(checkpoint_dir, COMPLETE_MARKER))


def is_complete(checkpoint_dir: str) -> bool:
    return os.path.isfile(os.path.join(checkpoint_dir, COMPLETE_MARKER))


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The checkpoint with the highest step whose save finished; partial ones (a crash mid-save) are skipped."""
    if not os.path.isdir(output_dir):
        return None
    steps = sorted(
        ((int(m.group(1)), name) for name in os.listdir(output_dir) if (m := _CHECKPOINT.match(name))), reverse=True
    )
    for _, name in steps:
        path = os.path.join(output_dir, name)
        if os.path.isdir(path) and is_complete(path):
            return path
    return None
