"""CSV files a run appends to: a writer off the training thread, and the truncation that undoes rows on resume."""

import csv
import os
import queue
import threading
from collections.abc import Iterator

from .atomic_write import atomic_write

_FSYNC = object()
_STOP = object()


def truncate_csv(path: str, last_step: int) -> dict[str, str] | None:
    """Drop the rows of `path` whose `step` is past `last_step`; returns the last row kept, if any.

    The file is streamed (a `samples.csv` tracking training examples can be large): read once to find the rows to
    drop and, only if there are any, once more into a new file that replaces it (`atomic_write`). Replaced, not
    rewritten in place: a crash mid-rewrite leaves the old file whole, and a writer still appending to the old file
    (the thread of a run that crashed in this process) cannot interleave rows with the kept ones.
    """
    if not os.path.isfile(path):
        return None
    last, dropped = None, False
    with open(path, newline="") as f:
        for keep, row in _rows(csv.DictReader(f), last_step):
            dropped |= not keep
            last = row if keep else last
    if not dropped:
        return last

    def write(tmp: str) -> None:
        with open(path, newline="") as src, open(tmp, "w", newline="") as dst:
            reader = csv.DictReader(src)
            writer = csv.DictWriter(dst, reader.fieldnames or [])
            writer.writeheader()
            writer.writerows(row for keep, row in _rows(reader, last_step) if keep)

    atomic_write(path, write)
    return last


def _rows(reader: csv.DictReader, last_step: int) -> Iterator[tuple[bool, dict[str, str]]]:
    """`(keep, row)` for each row of `reader`: rows past `last_step` and rows cut short are not kept."""
    columns = reader.fieldnames or []
    for row in reader:
        # A row cut short by a crash lacks fields (None): its step may be cut too, so it cannot be trusted.
        yield len(row) == len(columns) and None not in row.values() and int(row["step"]) <= last_step, row


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
