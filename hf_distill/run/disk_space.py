"""A save that fails because the disk is full ends the run with one line naming the folder and the space it needs.

The libraries that write checkpoints report a full disk each in their own way: `OSError` with `errno.ENOSPC` (or
`EDQUOT`, a quota), safetensors' `Os { code: 28, kind: StorageFull }`, and torch.save's zip writer only `file write
failed`, without the cause. The first two are recognised by their code or text; for the others, a disk with less free
space than the save needs is taken as the cause.
"""

import errno
import os
import shutil
from collections.abc import Callable

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from ..user_errors import UserInputError

_FULL_CODES = (errno.ENOSPC, errno.EDQUOT)
_FULL_TEXTS = ("No space left on device", "Disk quota exceeded", "StorageFull")


class DiskFullError(UserInputError):
    """A save ran out of disk space: the user's to fix (free space, then rerun), so the CLI shows it as one line."""


def tensor_bytes(value) -> int:
    """Bytes of the tensors in `value` (a tensor, or dicts and lists of them): what saving it writes, about."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0


def free_bytes(path: str) -> int:
    """Free bytes on the file system of `path` (or of its nearest existing parent)."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return shutil.disk_usage(path).free


def _says_full(err: BaseException) -> bool:
    while err is not None:
        if isinstance(err, OSError) and err.errno in _FULL_CODES:
            return True
        if any(text in str(err) for text in _FULL_TEXTS):
            return True
        err = err.__cause__ or err.__context__
    return False


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _disk_full_error(
    err: BaseException, what: str, path: str, needed: int, free: int, then: str
) -> DiskFullError | None:
    """The one-line error for `err`, raised while saving `what` to `path`, if a full disk caused it; else None.

    `needed` is about how many bytes the save writes, `free` the free bytes measured right after the failure (before
    its partial files were removed), `then` what to do once space is freed.
    """
    if not (_says_full(err) or free < needed):
        return None
    return DiskFullError(
        f"cannot save {what} ({path}): the disk is full (it needs about {_size(needed)}, {_size(free)} were free); "
        f"free some space, then {then}"
    )


def raise_if_save_failed(
    accelerator: Accelerator,
    failure: Exception | None,
    *,
    what: str,
    path: str,
    needed: Callable[[], int],
    then: Callable[[], str],
    cleanup: Callable[[], None],
) -> None:
    """After a save that every process took part in (`failure`: this process's exception, or None), raise on every
    process if it failed on any (a collective: call on all), so that none waits forever for the others.

    The main process first runs `cleanup` (removing the partial files). A full disk on any process is the
    `DiskFullError` naming `path` and about `needed()` bytes, with `then()` as what to do; another exception is
    raised as it was on the process that had it, and the others say which process failed.
    """
    free = free_bytes(path) if failure is not None else 0
    error = _disk_full_error(failure, what, path, needed(), free, then()) if failure is not None else None
    mine = (failure is not None, str(error) if error is not None else None)
    reports = gather_object([mine]) if accelerator.num_processes > 1 else [mine]
    if not any(failed for failed, _ in reports):
        return
    if accelerator.is_main_process:
        cleanup()
    full = next((message for _, message in reports if message is not None), None)
    if full is not None:
        raise DiskFullError(full) from failure
    if failure is not None:
        raise failure
    failed = [rank for rank, (failed, _) in enumerate(reports) if failed]
    raise RuntimeError(f"saving {what} ({path}) failed on process {failed[0]}; its error is in that process's log")
