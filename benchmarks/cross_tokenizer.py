"""Does a teacher with another tokenizer help? The demo student (recipes/demo/tokenizer) trained four ways, same
init, data, steps and seed: plain fine-tuning (`alpha=1.0`), distilled from recipes/demo/teacher_b (trained on
recipes/demo/tokenizer_b) with `cross_tokenizer: uld` and with `cross_tokenizer: aligned`, and, for reference,
distilled from the same-tokenizer demo teacher (recipes/demo/distill.yaml).

    python benchmarks/cross_tokenizer.py [--max_steps N] [--alpha A]

Prints the held-out cross-entropy of each student on its own tokens (eval_ce_loss: the four students share one
tokenizer, so the values compare), and wall-clock time.
"""

import argparse
import os
import tempfile
import time

from distill_vs_finetune import quiet_run_overrides

from hf_distill.commands.recipe import parse_recipe
from hf_distill.commands.train import run_training

CROSS = "recipes/demo/cross_tokenizer.yaml"
SAME = "recipes/demo/distill.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max_steps", type=int, default=None, help="override the recipes' max_steps")
    parser.add_argument("--alpha", type=float, default=None, help="override the distilled runs' alpha (CE weight)")
    opts = parser.parse_args()
    common = quiet_run_overrides(opts.max_steps)
    alpha = [] if opts.alpha is None else ["--alpha", str(opts.alpha)]
    runs = [
        ("fine-tuned (no teacher)", CROSS, ["--alpha", "1.0", "--cross_tokenizer", "off"]),
        ("teacher_b, cross_tokenizer: uld", CROSS, ["--cross_tokenizer", "uld", *alpha]),
        ("teacher_b, cross_tokenizer: aligned", CROSS, ["--cross_tokenizer", "aligned", *alpha]),
        ("same-tokenizer teacher (distill.yaml)", SAME, alpha),
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, recipe, flags) in enumerate(runs):
            start = time.perf_counter()
            argv = [*common, *flags, "--output_dir", os.path.join(tmp, str(i))]
            metrics = run_training(*parse_recipe(recipe, argv))
            rows.append((name, recipe, metrics, time.perf_counter() - start))

    _, _, config = parse_recipe(CROSS, common + alpha)
    print(f"\nstudent: recipes/demo/student_config, max_steps: {config.max_steps}, alpha: {config.alpha}")
    print("| run | eval_ce_loss | eval_kd_loss | eval_teacher_agreement | wall time (s) |")
    print("|---|---|---|---|---|")
    for name, _, metrics, seconds in rows:
        kd, agree = metrics.get("eval_kd_loss"), metrics.get("eval_teacher_agreement")
        kd = "-" if kd is None else f"{kd:.4f}"
        agree = "-" if agree is None else f"{agree:.3f}"
        print(f"| {name} | {metrics['eval_ce_loss']:.4f} | {kd} | {agree} | {seconds:.0f} |")
    baseline = rows[0][2]["eval_ce_loss"]
    for name, _, metrics, _ in rows[1:]:
        print(f"{name} / fine-tuned eval CE: {metrics['eval_ce_loss'] / baseline:.3f}")


if __name__ == "__main__":
    main()
