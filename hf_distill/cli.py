"""The `hf-distill` command: `train` and `check` a recipe.

hf-distill train RECIPE.yaml [--key value ...]
accelerate launch --config_file accelerate_configs/multi_gpu.yaml train.py RECIPE.yaml [--key value ...]
hf-distill check RECIPE.yaml [...]
"""

import argparse
import os
import sys

from .recipe import RecipeError, parse_recipe


def _train(recipe: str, overrides: list[str]) -> None:
    from .pipeline import run_training

    run_training(*parse_recipe(recipe, overrides))


def _check(recipes: list[str], overrides: list[str]) -> None:
    from .checks import check_recipe

    # bf16 or multi-GPU settings describe the machine a recipe is meant for, not a fault in it: validate as if on
    # the CPU so the check runs anywhere.
    for recipe in recipes:
        check_recipe(*parse_recipe(recipe, ["--use_cpu", "true", *overrides]))
        print(f"{recipe}: ok")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-distill", description="Knowledge distillation for language models.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="run a recipe", description="Run a recipe; --key value overrides it.")
    train.add_argument("recipe", help="YAML recipe")
    about = "validate recipes without loading weights"
    check = commands.add_parser("check", help=about, description=about)
    check.add_argument("recipes", nargs="+", help="YAML recipes")
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args, overrides = _parser().parse_known_args(argv)
    try:
        if args.command == "train":
            _train(args.recipe, overrides)
        else:
            _check(args.recipes, overrides)
    except (RecipeError, ValueError, FileNotFoundError) as err:
        # A bad recipe or bad data is the user's to fix: one line naming the problem, no traceback.
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"hf-distill: error: {message}", file=sys.stderr)
        if os.environ.get("HF_DISTILL_TRACEBACK"):
            raise
        sys.exit(2)


if __name__ == "__main__":
    main()
