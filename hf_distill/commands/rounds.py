"""Multi-round distillation: a recipe whose `rounds:` list holds stages, each a mapping of recipe keys that override
the shared ones. Round k trains in `output_dir/round-<k>/`; from round 2 on, the student starts from the previous
round's saved student, and `teacher_model_name_or_path: previous_round` makes that student the teacher too
(born-again distillation). A rerun skips the rounds that finished and resumes the unfinished one from its last
checkpoint.

```yaml
output_dir: outputs/born-again
teacher_model_name_or_path: Qwen/Qwen2.5-7B-Instruct
rounds:
  - {max_steps: 1000}
  - {teacher_model_name_or_path: previous_round, temperature: 1.0, max_steps: 500}
```
"""

import json
import logging
import os
from dataclasses import dataclass

from accelerate import PartialState

from ..arguments.script_arguments import DataArguments, ModelArguments
from ..config import DistillConfig
from ..run.atomic_write import write_json_atomically
from ..user_errors import UserError, in_context
from .check import check_recipe
from .recipe import ROUNDS_KEY, RecipeError, field_names, load_yaml, parse_mapping, unknown_key_error
from .train import run_training

logger = logging.getLogger(__name__)

PREVIOUS_ROUND = "previous_round"
# Written into a round's folder after its final save. Keep the file name: a rerun skips earlier rounds by it.
ROUND_MARKER = "round_complete.json"
# Set by the chain of rounds itself, never by a stage.
_CHAINED_KEYS = ("output_dir",)
_CHAINED_KEYS_AFTER_FIRST = ("model_name_or_path", "student_init")


@dataclass
class Round:
    """One parsed stage of a multi-round recipe; `number` counts from 1."""

    number: int
    model_args: ModelArguments
    data_args: DataArguments
    config: DistillConfig

    @property
    def marker(self) -> str:
        """Written after the round's final save: its presence means the round need not run again."""
        return os.path.join(self.config.output_dir, ROUND_MARKER)

    def is_complete(self) -> bool:
        """Whether an earlier invocation finished this round (a rerun skips it)."""
        return os.path.isfile(self.marker)


def is_multi_round(path: str) -> bool:
    """Whether the recipe at `path` holds `rounds:`."""
    return ROUNDS_KEY in load_yaml(path)


def parse_rounds(path: str, overrides: list[str] | None = None) -> list[Round]:
    """Every round of a multi-round recipe, parsed; `--key value` overrides apply to all rounds.

    Precedence: command line, then the round's keys, then the shared keys. `output_dir` (and, from round 2 on,
    `model_name_or_path` and `student_init`) follow from the chain of rounds and cannot be set in a round.
    """
    recipe = load_yaml(path)
    stages = recipe.pop(ROUNDS_KEY, None)
    if not isinstance(stages, list) or not stages or not all(isinstance(s, dict) for s in stages):
        raise RecipeError(
            f"invalid {ROUNDS_KEY!r}",
            path,
            "it must be a non-empty list of mappings",
            "write one mapping of keys a round",
        )
    known = set(field_names())
    for key in recipe:
        if key not in known:
            raise unknown_key_error(key, path)
    for number, stage in enumerate(stages, start=1):
        forbidden = _CHAINED_KEYS + (_CHAINED_KEYS_AFTER_FIRST if number > 1 else ())
        for key in stage:
            if key in forbidden:
                raise RecipeError(
                    "key set by the chain of rounds", f"{key!r} in round {number} of {path}", *_why_chained(key)
                )
            if key not in known:
                raise unknown_key_error(key, f"round {number} of {path}")
    overrides = list(overrides or [])
    # The command line may move output_dir, so round 1 is parsed once as given to learn where the rounds go.
    output_dir = _parse(recipe | stages[0], overrides, f"round 1 of {path}")[2].output_dir

    rounds: list[Round] = []
    for number, stage in enumerate(stages, start=1):
        where = f"round {number} of {path}"
        values = recipe | stage
        chained = ["--output_dir", os.path.join(output_dir, f"round-{number}")]
        if values.get("teacher_model_name_or_path") == PREVIOUS_ROUND:
            if not rounds:
                raise RecipeError(
                    "no previous round",
                    f"teacher_model_name_or_path: {PREVIOUS_ROUND} in {where}",
                    "round 1 has no previous round to distil from",
                    "name a teacher for round 1",
                )
            values["teacher_model_name_or_path"] = rounds[-1].config.output_dir
        if rounds:
            chained += ["--model_name_or_path", rounds[-1].config.output_dir, "--student_init", "pretrained"]
        # The chained flags come last so that they win over the user's command line.
        rounds.append(Round(number, *_parse(values, overrides + chained, where)))
        if rounds[-1].model_args.use_peft and len(stages) > 1:
            # A LoRA round saves an adapter, which is no full model for the next round (or teacher) to load.
            raise RecipeError(
                "LoRA in a multi-round recipe",
                f"use_peft: true in {where}",
                "a multi-round recipe chains full models, not adapters",
                "train the rounds without use_peft",
            )
    return rounds


def _why_chained(key: str) -> tuple[str, str]:
    if key == "output_dir":
        return "round k writes to output_dir/round-<k>", "set it once for all rounds"
    return "from round 2 on, the student is the previous round's student", "remove it from the round"


def _parse(values: dict, overrides: list[str], where: str) -> tuple[ModelArguments, DataArguments, DistillConfig]:
    try:
        return parse_mapping(values, overrides, where)
    except UserError as err:
        raise (err if where in str(err) else in_context(err, where)) from None


def check_rounds(rounds: list[Round]) -> None:
    """`check_recipe` on every round; the folders earlier rounds will write are taken on trust."""
    for round_ in rounds:
        produced = {r.config.output_dir for r in rounds if r.number < round_.number}
        try:
            check_recipe(round_.model_args, round_.data_args, round_.config, produced_paths=produced)
        except UserError as err:
            raise in_context(err, f"round {round_.number}") from None


def run_rounds(rounds: list[Round]) -> dict:
    """Train the rounds in order, skipping the complete ones; returns the last round's final metrics."""
    metrics: dict = {}
    for round_ in rounds:
        if round_.is_complete():
            logger.warning(f"round {round_.number} is complete ({round_.marker}); skipping it")
            with open(round_.marker) as f:
                metrics = json.load(f)["metrics"]
            continue
        logger.warning(f"round {round_.number} of {len(rounds)}: training in {round_.config.output_dir}")
        metrics = run_training(round_.model_args, round_.data_args, round_.config)
        if round_.config.process_index == 0:
            # Atomic: a crash mid-write must not leave a marker that makes the rerun skip an unrecorded round.
            write_json_atomically(round_.marker, {"round": round_.number, "metrics": metrics})
        # The next round loads this round's student, which only the main process has written.
        PartialState().wait_for_everyone()
    return metrics
