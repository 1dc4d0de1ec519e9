"""The `hf-distill` command: `train` and `check` a recipe (single- or multi-round), `report` on a run, and
`cache-teacher`: store a recipe's teacher top-k for training with `teacher_cache_dir`.

hf-distill train RECIPE.yaml [--key value ...]
accelerate launch --config_file accelerate_configs/multi_gpu.yaml train.py RECIPE.yaml [--key value ...]
hf-distill check RECIPE.yaml [...]
hf-distill report OUTPUT_DIR [--top N]
hf-distill cache-teacher RECIPE.yaml --output_dir DIR --top_k K [--shard_size N] [--key value ...]
hf-distill evaluate RECIPE.yaml [--model DIR] [--teacher DIR_OR_ID] [--split eval] [--max_new_tokens N]
    [--metric NAME_OR_PATH ...] [--output FILE.json] [--key value ...]

Every command takes `--debug`. A user error (`hf_distill.user_errors.UserError`) is one line on stderr,
`hf-distill: error: <what> (<where>): <why>; <what to do>`, from the main process only, and exit code 2 on every
process; `--debug` or `HF_DISTILL_DEBUG=1` prints its traceback first. Any other exception is a bug: its traceback,
then a line saying so, exit code 1.
"""

import argparse
import os
import sys
import traceback

from accelerate import PartialState

from .commands.cache_teacher import build_teacher_cache
from .commands.check import check_recipe
from .commands.evaluate import format_results, run_evaluation
from .commands.recipe import parse_recipe
from .commands.report import write_report
from .commands.rounds import check_rounds, is_multi_round, parse_rounds, run_rounds
from .commands.train import run_training
from .run.cpu_threads import choose_torch_threads
from .run.process_group import leave_process_group
from .user_errors import UserError


def _train(recipe: str, overrides: list[str]) -> None:
    choose_torch_threads()
    if is_multi_round(recipe):
        run_rounds(parse_rounds(recipe, overrides))
    else:
        run_training(*parse_recipe(recipe, overrides))


def _check(recipes: list[str], overrides: list[str]) -> None:
    # bf16, fp16 or multi-GPU settings describe the machine a recipe is meant for, not a fault in it: validate as if
    # on the CPU, in float32, so the check runs anywhere.
    overrides = ["--use_cpu", "true", "--fp16", "false", *overrides]
    for recipe in recipes:
        if is_multi_round(recipe):
            check_rounds(parse_rounds(recipe, overrides))
        else:
            check_recipe(*parse_recipe(recipe, overrides))
        print(f"{recipe}: ok")


def _cache_teacher(recipe: str, overrides: list[str], cache_dir: str, top_k: int, shard_size: int) -> None:
    choose_torch_threads()
    print(build_teacher_cache(*parse_recipe(recipe, overrides), cache_dir, top_k, shard_size))


def _evaluate(args: argparse.Namespace, overrides: list[str]) -> None:
    choose_torch_threads()
    results = run_evaluation(
        args.recipe, overrides, args.model, args.teacher, args.split, args.max_new_tokens, args.metric, args.output
    )
    if PartialState().is_main_process:
        print(format_results(results))


def _report(output_dir: str, top: int) -> None:
    print(write_report(output_dir, top=top))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-distill", description="Knowledge distillation for language models.")
    # On every command. A recipe's `debug:` key is TrainingArguments' own field; on the command line `--debug` is this.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", help="print the traceback of a user error too (or set HF_DISTILL_DEBUG=1)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train", parents=[common], help="run a recipe", description="Run a recipe; --key value overrides it."
    )
    train.add_argument("recipe", help="YAML recipe")
    about = "validate recipes without loading weights"
    check = commands.add_parser("check", parents=[common], help=about, description=about)
    check.add_argument("recipes", nargs="+", help="YAML recipes")
    about = "plot metrics.csv and samples.csv of a run into OUTPUT_DIR/report/ (needs matplotlib)"
    report = commands.add_parser("report", parents=[common], help=about, description=about)
    report.add_argument("output_dir", help="the run's output_dir (of a single- or multi-round recipe)")
    report.add_argument("--top", type=int, default=10, help="how many worst examples to list (default: 10)")
    about = "write the teacher's top-k log-probabilities of a recipe's train split, for teacher_cache_dir"
    cache = commands.add_parser("cache-teacher", parents=[common], help=about, description=about)
    cache.add_argument("recipe", help="YAML recipe (its teacher, tokenizer and data)")
    # dest differs from the name: the recipe's own output_dir (the training run's) stays untouched.
    cache.add_argument("--output_dir", dest="cache_dir", required=True, help="folder of the cache")
    cache.add_argument("--top_k", type=int, required=True, help="teacher tokens kept per target token")
    cache.add_argument("--shard_size", type=int, default=1000, help="examples per shard (default: 1000)")
    about = "compare the student with its teacher on held-out data: generation, teacher-forced, size and speed"
    evaluate = commands.add_parser("evaluate", parents=[common], help=about, description=about)
    evaluate.add_argument("recipe", help="YAML recipe (its tokenizer, data, teacher and output_dir)")
    evaluate.add_argument("--model", help="the student (default: the recipe's output_dir)")
    evaluate.add_argument("--teacher", help="the teacher (default: the recipe's teacher_model_name_or_path)")
    evaluate.add_argument("--split", help="the split to evaluate (default: the recipe's dataset_eval_split)")
    evaluate.add_argument("--max_new_tokens", type=int, default=32, help="greedy tokens per answer (default: 32)")
    evaluate.add_argument(
        "--metric", action="append", default=[], help="an extra evaluate metric, by name (needs network) or path"
    )
    evaluate.add_argument("--output", help="also write the results to this JSON file")
    return parser


def _debug(args: argparse.Namespace) -> bool:
    return args.debug or os.environ.get("HF_DISTILL_DEBUG", "") not in ("", "0")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    args, overrides = parser.parse_known_args(argv)
    if args.command == "report" and overrides:
        parser.error(f"unrecognized arguments: {' '.join(overrides)}")
    try:
        if args.command == "train":
            _train(args.recipe, overrides)
        elif args.command == "check":
            _check(args.recipes, overrides)
        elif args.command == "cache-teacher":
            _cache_teacher(args.recipe, overrides, args.cache_dir, args.top_k, args.shard_size)
        elif args.command == "evaluate":
            _evaluate(args, overrides)
        else:
            _report(args.output_dir, args.top)
        leave_process_group()
    except UserError as err:
        # The user's to fix: one line, and the same exit code on every process, but printed by the main one only
        # (under `accelerate launch` each rank hits the same bad input).
        if _debug(args):
            traceback.print_exc()
        if _is_main_process():
            print(f"hf-distill: error: {err.line()}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:
        # A bug: the traceback is what a report needs. SystemExit and KeyboardInterrupt are no Exception.
        traceback.print_exc()
        print(
            f"hf-distill: internal error: {type(err).__name__} is a bug in hf_distill, not a problem in your input; "
            "please report it to the hf_distill maintainers with the command, the recipe and the traceback above "
            "(HF_DISTILL_DEBUG=1 shows the traceback of a user error too)",
            file=sys.stderr,
        )
        sys.exit(1)


def _is_main_process() -> bool:
    """Whether this process prints user errors: rank 0 of a launch, read from the environment so that a failure
    before the process group exists (a bad recipe) is printed once too."""
    return os.environ.get("RANK", "0") == "0"


if __name__ == "__main__":
    main()
