"""Whole or nothing: a file or folder written under a temporary name and renamed into place once it is complete."""

import json
import os
import shutil
from collections.abc import Callable


def temporary_path(path: str) -> str:
    """Where `atomic_write` writes `path` before the rename; a kill mid-write leaves only this name behind."""
    return f"{path}.tmp"


def atomic_write(path: str, write: Callable[[str], object]) -> None:
    """`write(tmp)` writes the file or folder `path` would hold at `tmp`; it is fsync'ed, then renamed to `path`.

    A reader of `path` sees the old content (or nothing) until the rename, then the whole new content, even if the
    process is killed at any point. A leftover at `tmp` from a killed write is removed first; if `write` raises, what
    it wrote is removed. A folder is renamed only to a `path` that does not exist (or is an empty folder).
    """
    tmp = temporary_path(path)
    remove_path(tmp)
    try:
        write(tmp)
        _fsync_tree(tmp)
        os.replace(tmp, path)
    except BaseException:
        remove_path(tmp)
        raise
    # The rename itself is durable only once the folder that holds the name is on disk.
    _fsync(os.path.dirname(os.path.abspath(path)))


def write_json_atomically(path: str, content: object) -> None:
    """`content` as indented JSON at `path`, written by `atomic_write`."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(content, f, indent=2)

    atomic_write(path, write)


def remove_path(path: str) -> None:
    """Delete the file, link or folder at `path`, if there is one."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def _fsync_tree(path: str) -> None:
    if not os.path.isdir(path):
        _fsync(path)
        return
    for root, _, names in os.walk(path):
        for name in names:
            _fsync(os.path.join(root, name))
        _fsync(root)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def move_entries(source: str, destination: str) -> None:
    """Move every entry of the folder `source` into the folder `destination` (replacing entries of the same name),
    then remove `source`. Each entry arrives whole (it is on disk before its rename), though not all at one instant:
    a kill in between leaves some entries moved, each of them complete."""
    _fsync_tree(source)
    for name in sorted(os.listdir(source)):
        target = os.path.join(destination, name)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)  # os.replace renames a folder only onto a missing or empty one
        os.replace(os.path.join(source, name), target)
    _fsync(destination)
    os.rmdir(source)
