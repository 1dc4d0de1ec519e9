"""Work each machine's main process does first (filling the datasets cache) while the other processes wait, as
Accelerate's `main_process_first`, but with a user error of a main process raised on every process.

Inside Accelerate's context manager a main process that raises never reaches the barrier the others wait at: they
hang until the launcher kills them, and the run ends in the launcher's traceback instead of one line from each rank.
"""

from collections.abc import Callable
from typing import TypeVar

from accelerate import PartialState
from accelerate.utils import gather_object

from ..user_errors import UserError

T = TypeVar("T")


def main_process_first(work: Callable[[], T]) -> T:
    """`work()` on each machine's main process, then on the others (as `TrainingArguments.main_process_first`, whose
    cache is per machine); a `UserError` it raises on a main process is raised on every process, and the others
    never start it."""
    state = PartialState()
    if state.num_processes == 1:
        return work()
    result, failure = None, None
    if state.is_local_main_process:
        try:
            result = work()
        except UserError as err:
            failure = err
    # Also the barrier the other processes wait at.
    failure = next((err for err in gather_object([failure]) if err is not None), None)
    if failure is not None:
        raise failure
    if not state.is_local_main_process:
        result = work()
    state.wait_for_everyone()
    return result
