"""On-policy vs off-policy distillation on the demo, from the same start and for the same number of optimizer steps,
scored on held-out exact match of greedy answers to the demo's verifiable questions.

    python benchmarks/on_policy_vs_off_policy.py [--start_steps 600] [--steps 200]

1. start: the off-policy demo student (`recipes/demo/distill.yaml`, `--start_steps` steps from random weights);
2. off-policy: `--steps` more steps of `recipes/demo/on_policy.yaml` with `lmbda: 0` (gold answers, CE + reverse KL);
3. on-policy: `--steps` more steps of `recipes/demo/on_policy.yaml` as shipped (`lmbda: 1`: the student's own sampled
   answers, reverse KL alone); the two continuations differ in `lmbda` only.
Each model, the teacher too, answers every question of the eval split greedily (`hf-distill evaluate`); exact match
is reported on the verifiable categories (towns, jobs, sums, counts, reversals) and per category, with wall times.
"""

import argparse
import os
import tempfile
import time

from transformers.utils import logging

from hf_distill.commands.evaluate import run_evaluation
from hf_distill.commands.recipe import parse_recipe
from hf_distill.commands.train import run_training

VERIFIABLE = ("towns", "jobs", "sums", "counts", "reversals")
ON_POLICY = "recipes/demo/on_policy.yaml"


def train(recipe: str, overrides: list[str]) -> float:
    start = time.perf_counter()
    run_training(*parse_recipe(recipe, overrides))
    return time.perf_counter() - start


def verifiable_exact_match(results: dict, role: str) -> float:
    categories = results["categories"]
    examples = sum(categories[c]["examples"] for c in VERIFIABLE)
    return sum(categories[c][role]["exact_match"] * categories[c]["examples"] for c in VERIFIABLE) / examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start_steps", type=int, default=600, help="off-policy steps of the start (default: 600)")
    parser.add_argument("--steps", type=int, default=200, help="steps of each continuation (default: 200)")
    opts = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.set_verbosity_error()
    quiet = ["--disable_tqdm", "true", "--save_strategy", "no", "--eval_strategy", "no", "--log_completions", "false"]

    with tempfile.TemporaryDirectory() as tmp:
        start = os.path.join(tmp, "start")
        seconds = {
            "start": train(
                "recipes/demo/distill.yaml", [*quiet, "--output_dir", start, "--max_steps", str(opts.start_steps)]
            )
        }
        continued = [*quiet, "--model_name_or_path", start, "--max_steps", str(opts.steps)]
        runs = {"start": start, "off-policy": os.path.join(tmp, "off"), "on-policy": os.path.join(tmp, "on")}
        seconds["off-policy"] = train(ON_POLICY, [*continued, "--output_dir", runs["off-policy"], "--lmbda", "0.0"])
        seconds["on-policy"] = train(ON_POLICY, [*continued, "--output_dir", runs["on-policy"]])
        results = {name: run_evaluation(ON_POLICY, [], model=path) for name, path in runs.items()}

    teacher = results["start"]
    print(
        f"\nstart: {opts.start_steps} off-policy steps; each continuation: {opts.steps} steps; eval split of the demo"
    )
    header = [
        "model",
        "steps",
        "exact match (verifiable)",
        *VERIFIABLE,
        "stories token F1",
        "eval CE",
        "reverse KL",
        "train s",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    rows = [(name, results[name], "student") for name in runs] + [("teacher", teacher, "teacher")]
    for name, result, role in rows:
        steps = {"start": opts.start_steps, "teacher": "-"}.get(name, opts.start_steps + opts.steps)
        per_category = [f"{result['categories'][c][role]['exact_match']:.3f}" for c in VERIFIABLE]
        kl = f"{result['student_to_teacher']['reverse_kl']:.4f}" if role == "student" else "-"
        train_seconds = f"{seconds[name]:.0f}" if name in seconds else "-"
        print(
            f"| {name} | {steps} | {verifiable_exact_match(result, role):.3f} | {' | '.join(per_category)} | "
            f"{result['categories']['stories'][role]['token_f1']:.3f} | {result[role]['ce']:.4f} | {kl} | "
            f"{train_seconds} |"
        )
    on, off = (verifiable_exact_match(results[name], "student") for name in ("on-policy", "off-policy"))
    print(f"\non-policy - off-policy exact match (verifiable): {on - off:+.3f}")
    print(f"on-policy / off-policy training time: {seconds['on-policy'] / seconds['off-policy']:.2f}x")


if __name__ == "__main__":
    main()
