"""One training run per `output_dir`: two runs writing the same checkpoints and `metrics.csv` would mix them without a
word. The main process holds `output_dir/hf_distill.lock` (its host and pid) for the whole run: from before the models
load, through training, the final evaluation and save, to the model card."""

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator

from ..user_errors import UserInputError

logger = logging.getLogger(__name__)

LOCK_NAME = "hf_distill.lock"
# Locks this process holds, by path, with how many `run_lock` blocks hold each: the pipeline holds the lock for the
# whole run, and `DistillTrainer.train` inside it takes the same lock again.
_held: dict[str, int] = {}


class OutputDirInUseError(UserInputError):
    """Another live run holds the lock of this `output_dir`."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def _read(path: str) -> dict | None:
    try:
        with open(path) as f:
            holder = json.load(f)
        return holder if isinstance(holder, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def _take(path: str, me: dict) -> bool:
    """Create the lock holding `me`, whole or not at all: written aside, then hard-linked into place, which fails if
    the lock exists."""
    aside = f"{path}.{me['host']}.{me['pid']}"
    with open(aside, "w") as f:
        json.dump(me, f)
    try:
        os.link(aside, path)
        return True
    except FileExistsError:
        return False
    except OSError:
        # A file system without hard links: exclusive creation, then the content (a kill in between leaves an empty
        # lock, which the next run takes over as unreadable).
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return True
    finally:
        os.remove(aside)


def _refuse_if_held(output_dir: str, path: str, holder: dict) -> None:
    host, pid = holder.get("host"), holder.get("pid")
    if not isinstance(pid, int):
        return  # unreadable: taken over
    if host == socket.gethostname() and (pid == os.getpid() or _alive(pid)):
        raise OutputDirInUseError(
            "output_dir in use",
            f"output_dir={output_dir!r}",
            f"another run holds it (pid {pid} on this host, since {holder.get('since')})",
            "wait for it to end, or set another output_dir",
        )
    if host != socket.gethostname():
        raise OutputDirInUseError(
            "output_dir in use",
            f"output_dir={output_dir!r}",
            f"another run holds it (pid {pid} on host {host!r}, since {holder.get('since')})",
            f"wait for it to end, or set another output_dir (if that run is dead, delete {path})",
        )


def check_free(output_dir: str) -> None:
    """Raise `OutputDirInUseError` now if another live run holds `output_dir` (a lock this process holds is no other
    run's): `build_trainer` calls it before any model is loaded, so a second run stops at once."""
    path = os.path.join(output_dir, LOCK_NAME)
    holder = _read(path)
    if holder is not None and os.path.abspath(path) not in _held:
        _refuse_if_held(output_dir, path, holder)


def acquire(output_dir: str) -> str:
    """Take the lock of `output_dir` for this process; returns its path.

    A lock left by a dead process of this host (a run killed with SIGKILL, or a crashed machine's reboot) is taken
    over with a warning. A live holder, or one on another host (whose liveness cannot be seen from here), is an
    `OutputDirInUseError` naming it.
    """
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, LOCK_NAME)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    while not _take(path, me):
        holder = _read(path)
        if holder is None:
            continue  # released meanwhile
        _refuse_if_held(output_dir, path, holder)
        host, pid = holder.get("host"), holder.get("pid")
        # Moved aside under a name of our own first: of two runs taking over the same stale lock, only one rename
        # succeeds, and the other then finds the winner's lock.
        stale = f"{path}.stale.{me['pid']}"
        try:
            os.rename(path, stale)
        except FileNotFoundError:
            continue
        if _read(stale) != holder:
            # Another run took the stale lock over between our read and our rename: give its lock back.
            with contextlib.suppress(FileExistsError):
                os.link(stale, path)
            os.remove(stale)
            continue
        os.remove(stale)
        what = f"pid {pid} on this host, no longer running" if host == me["host"] else "an unreadable lock file"
        logger.warning(f"taking over the lock of output_dir={output_dir!r} from a dead run ({what})")
    return path


def release(path: str) -> None:
    """Remove the lock if this process holds it."""
    holder = _read(path)
    if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        os.remove(path)


@contextlib.contextmanager
def run_lock(output_dir: str, enabled: bool = True) -> Iterator[None]:
    """Hold the lock of `output_dir` for the block (on the main process: `enabled`). Blocks nest: a block inside one
    that holds the same lock keeps it, and the outermost releases it."""
    if not enabled:
        yield
        return
    key = os.path.abspath(os.path.join(output_dir, LOCK_NAME))
    if key not in _held:
        acquire(output_dir)
    _held[key] = _held.get(key, 0) + 1
    try:
        yield
    finally:
        _held[key] -= 1
        if not _held[key]:
            del _held[key]
            release(key)
