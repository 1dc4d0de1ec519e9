"""The run's last save: the trained student and its tokenizer land in `output_dir` as whole files, never a partial
one, and the model card (`README.md`, written after them) is there only once they all are.

The files are written into `output_dir/final-model.tmp/` first and moved into `output_dir` once every process has
saved its part. A kill or a full disk while they are written leaves `output_dir` as it was, less its card; a kill
while they are moved leaves some files new and some old, each whole, and no card. Either way the rerun of the same
command resumes from the last checkpoint and saves again.
"""

import os

from .atomic_write import move_entries, remove_path, temporary_path
from .checkpoints import resume_advice
from .disk_space import raise_if_save_failed, tensor_bytes

MODEL_CARD = "README.md"


def staging_path(output_dir: str) -> str:
    """Where the final save writes its files before they are moved into `output_dir`."""
    return temporary_path(os.path.join(output_dir, "final-model"))


def save_final_model(trainer, output_dir: str) -> None:
    """`trainer.save_model(output_dir)`, staged (see the module docstring); call on every process."""
    staging = staging_path(output_dir)
    main = trainer.args.should_save
    if main:
        remove_path(staging)  # a killed save's leftover
        # A card beside files that are about to change would describe a model that is not (yet) there.
        remove_path(os.path.join(output_dir, MODEL_CARD))
    trainer.accelerator.wait_for_everyone()
    failure = None
    try:
        trainer.save_model(staging, _internal_call=True)  # internal: pushing is the pipeline's next phase, not this
    except Exception as err:
        failure = err
    raise_if_save_failed(
        trainer.accelerator,
        failure,
        what="the trained model",
        path=output_dir,
        needed=lambda: tensor_bytes(trainer.accelerator.unwrap_model(trainer.model).state_dict()),
        then=lambda: resume_advice(output_dir) + " and save it again",
        cleanup=lambda: remove_path(staging),
    )
    if main:
        # PEFT's save_pretrained writes a card of its own, which would arrive (its name sorts first) before the
        # weights: the pipeline writes the run's card once every file is in place.
        remove_path(os.path.join(staging, MODEL_CARD))
        move_entries(staging, output_dir)
    trainer.accelerator.wait_for_everyone()
