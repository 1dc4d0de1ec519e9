"""Does distillation beat plain fine-tuning? The demo recipe, run twice side by side: as shipped (teacher, alpha from
the recipe) and with `alpha=1.0` (cross-entropy only, no teacher), same student init, data, steps and seed.

    python benchmarks/distill_vs_finetune.py [--recipe recipes/demo/distill.yaml] [--max_steps N]

Prints the held-out cross-entropy (eval_ce_loss) of both students and their ratio, plus wall-clock time.
"""

import argparse
import os
import tempfile
import time

from transformers.utils import logging

from hf_distill.commands.recipe import parse_recipe
from hf_distill.commands.train import run_training


def run(recipe: str, overrides: list[str]) -> tuple[dict, float]:
    start = time.perf_counter()
    metrics = run_training(*parse_recipe(recipe, overrides))
    return metrics, time.perf_counter() - start


def quiet_run_overrides(max_steps: int | None) -> list[str]:
    """Offline, quiet runs that save no checkpoint and evaluate once at the end: the recipe overrides (and
    `max_steps` when given) every comparison run shares."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.set_verbosity_error()
    common = ["--disable_tqdm", "true", "--save_strategy", "no", "--eval_strategy", "no"]
    return common if max_steps is None else [*common, "--max_steps", str(max_steps)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/demo/distill.yaml")
    parser.add_argument("--max_steps", type=int, default=None, help="override the recipe's max_steps")
    opts = parser.parse_args()
    common = quiet_run_overrides(opts.max_steps)
    with tempfile.TemporaryDirectory() as tmp:
        distilled, t_distill = run(opts.recipe, [*common, "--output_dir", os.path.join(tmp, "distill")])
        finetuned, t_finetune = run(
            opts.recipe, [*common, "--output_dir", os.path.join(tmp, "finetune"), "--alpha", "1.0"]
        )

    _, _, config = parse_recipe(opts.recipe, common)
    print(f"\nrecipe: {opts.recipe}, max_steps: {config.max_steps}, teacher: {config.teacher_model_name_or_path}")
    print("| run | alpha | eval_ce_loss | eval_teacher_agreement | wall time (s) |")
    print("|---|---|---|---|---|")
    print(
        f"| distilled | {config.alpha} | {distilled['eval_ce_loss']:.4f} | "
        f"{distilled.get('eval_teacher_agreement', float('nan')):.3f} | {t_distill:.0f} |"
    )
    print(f"| fine-tuned (no teacher) | 1.0 | {finetuned['eval_ce_loss']:.4f} | - | {t_finetune:.0f} |")
    ratio = distilled["eval_ce_loss"] / finetuned["eval_ce_loss"]
    print(
        f"\ndistilled / fine-tuned eval CE: {ratio:.3f} ({'distillation wins' if ratio < 1 else 'fine-tuning wins'})"
    )


if __name__ == "__main__":
    main()
