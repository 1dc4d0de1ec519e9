"""CSV files a run appends to: a writer off the training thread, and the truncation that undoes rows on resume."""

import csv
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

from .atomic_write import atomic_write

logger = logging.getLogger(__name__)
T = TypeVar("T")

_FSYNC = object()
_STOP = object()


def readable_rows(
    reader: csv.DictReader,
    path: str,
    parse: Callable[[dict[str, str]], T],
    warn: bool = True,
    skipped: list[int] | None = None,
) -> Iterator[T]:
    """`parse(row)` of each row of `reader` that has all its fields and that `parse` reads without a ValueError.

    The others (a row cut short by a crash, or damaged: a step that is no number) are left out, with one warning
    (`warn`) naming `path` and their lines, which are also appended to `skipped`: the files are logs of a run, and
    one bad row must stop neither a resumed run nor a report.
    """
    columns, bad = reader.fieldnames or [], []
    for row in reader:
        try:
            if len(row) != len(columns) or None in row.values():
                raise ValueError("fields missing")
            parsed = parse(row)
        except ValueError:
            bad.append(reader.line_num)
            continue
        yield parsed
    if skipped is not None:
        skipped += bad
    if bad and warn:
        shown = ", ".join(map(str, bad[:10])) + (", ..." if len(bad) > 10 else "")
        logger.warning(f"{path}: skipping {len(bad)} rows that cannot be read (lines {shown})")


def truncate_csv(path: str, last_step: int) -> dict[str, str] | None:
    """Drop the rows of `path` whose `step` is past `last_step`, and the rows that cannot be read (`readable_rows`);
    returns the last row kept, if any.

    The file is streamed (a `samples.csv` tracking training examples can be large): read once to find the rows to
    drop and, only if there are any, once more into a new file that replaces it (`atomic_write`). Replaced, not
    rewritten in place: a crash mid-rewrite leaves the old file whole, and a writer still appending to the old file
    (the thread of a run that crashed in this process) cannot interleave rows with the kept ones.
    """
    if not os.path.isfile(path):
        return None

    def up_to_last_step(row: dict[str, str]) -> tuple[bool, dict[str, str]]:
        return int(row["step"]) <= last_step, row

    last, dropped, unreadable = None, False, []
    with open(path, newline="") as f:
        for keep, row in readable_rows(csv.DictReader(f), path, up_to_last_step, skipped=unreadable):
            dropped |= not keep
            last = row if keep else last
    if not dropped and not unreadable:
        return last

    def write(tmp: str) -> None:
        with open(path, newline="") as src, open(tmp, "w", newline="") as dst:
            reader = csv.DictReader(src)
            writer = csv.DictWriter(dst, reader.fieldnames or [])
            writer.writeheader()
            writer.writerows(row for keep, row in readable_rows(reader, path, up_to_last_step, warn=False) if keep)

    atomic_write(path, write)
    return last


class BackgroundCSVWriter:
    """Appends rows to a CSV file from a daemon thread; `flush` returns once every row put so far is on disk."""

    def __init__(self, path: str, columns: tuple[str, ...]):
        self.path = path
        self.columns = columns
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._error: Exception | None = None

    def write(self, row: dict) -> None:
        self._raise_error()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"csv-writer:{self.path}", daemon=True)
            self._thread.start()
        self._queue.put(row)

    def flush(self) -> None:
        if self._thread is not None:
            self._queue.put(_FSYNC)
            self._queue.join()
        self._raise_error()

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._queue.join()
            self._thread.join()
            self._thread = None
        self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise OSError(f"cannot write {self.path}: {error}") from error

    def _run(self) -> None:
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            new = not os.path.isfile(self.path) or os.path.getsize(self.path) == 0
            columns = self.columns
            if not new:
                # A file a run resumed from began with other columns (an older version): rows keep its header.
                with open(self.path, newline="") as existing:
                    columns = next(csv.reader(existing), None) or columns
            with open(self.path, "a", newline="") as f:
                writer = csv.DictWriter(f, columns, restval="", extrasaction="ignore")
                if new:
                    writer.writeheader()
                while True:
                    item = self._queue.get()
                    try:
                        if item is _STOP:
                            f.flush()
                            os.fsync(f.fileno())
                            return
                        if item is _FSYNC:
                            f.flush()
                            os.fsync(f.fileno())
                        else:
                            writer.writerow(item)
                    finally:
                        self._queue.task_done()
        except Exception as err:
            # The training thread reports the error; this thread keeps consuming so that its flush() cannot hang.
            self._error = err
            while self._queue.get() is not _STOP:
                self._queue.task_done()
            self._queue.task_done()
