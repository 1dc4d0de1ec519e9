"""`hf-distill cache-teacher` that SIGKILLs itself while writing its second shard; used by test_teacher_cache.py.

python tests/scripts/cache_fault_run.py RECIPE CACHE_DIR TOP_K SHARD_SIZE
"""

import os
import signal
import sys

from hf_distill.cli import main
from hf_distill.teachers import cache_builder as teacher_cache

save_shard = teacher_cache.save_shard
saved = []


def save_then_die(shard, path):
    if saved:
        # Half a shard on disk under its temporary name, as a kill in the middle of save_to_disk leaves it.
        os.makedirs(f"{path}.tmp")
        open(f"{path}.tmp/partial", "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    save_shard(shard, path)
    saved.append(path)


if __name__ == "__main__":
    recipe, cache_dir, top_k, shard_size = sys.argv[1:]
    teacher_cache.save_shard = save_then_die
    main(["cache-teacher", recipe, "--output_dir", cache_dir, "--top_k", top_k, "--shard_size", shard_size])
