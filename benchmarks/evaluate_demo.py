"""The demo's `hf-distill evaluate` table: the teacher, the distilled student and the fine-tuned student side by side
(the table of `benchmarks/results/evaluate_demo_cpu.md` and of the README).

    python benchmarks/evaluate_demo.py [--distilled DIR] [--finetuned DIR] [--max_steps N] [--max_eval_samples N]
        [--max_new_tokens 32]

A student not given as an existing folder is trained into a temporary folder from `recipes/demo/distill.yaml`: the
distilled one as shipped, the fine-tuned one with `--alpha 1.0` (cross-entropy only, no teacher); same
initialisation, data, steps and seed. Each is then evaluated as `hf-distill evaluate recipes/demo/distill.yaml
--model DIR` does, against the recipe's teacher (a folder that is the recipe's own `output_dir` gets its
`evaluation.json` and model card section, as with the command). Prints the Markdown tables and the wall times.
"""

import argparse
import os
import tempfile
import time

from transformers.utils import logging

from hf_distill.commands.evaluate import run_evaluation
from hf_distill.commands.recipe import parse_recipe
from hf_distill.commands.train import run_training
from hf_distill.run.model_card import format_number

RECIPE = "recipes/demo/distill.yaml"
STUDENTS = ("distilled", "fine-tuned")
# Rows of the main table: label, role the value is read from ("model" for each column's own), key.
ROWS = (
    ("parameters", "model", "parameters"),
    ("exact match", "model", "exact_match"),
    ("token F1", "model", "token_f1"),
    ("CE on the reference (nats/token)", "model", "ce"),
    ("perplexity", "model", "perplexity"),
    ("KL(teacher \\|\\| student) per token", "pair", "forward_kl"),
    ("KL(student \\|\\| teacher) per token", "pair", "reverse_kl"),
    ("top-1 agreement with the teacher", "pair", "top1_agreement"),
)


def train(overrides: list[str]) -> float:
    start = time.perf_counter()
    run_training(*parse_recipe(RECIPE, overrides))
    return time.perf_counter() - start


def _cell(value) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:.4f}"


def tables(results: dict[str, dict]) -> list[str]:
    """The main table (teacher, then each student) and the per-category exact match and token F1 table."""
    teacher = results[STUDENTS[0]]["teacher"]
    lines = ["| | teacher | " + " | ".join(f"{name} student" for name in STUDENTS) + " |", "|---|---:|---:|---:|"]
    for label, source, key in ROWS:
        first = _cell(teacher[key]) if source == "model" else "-"
        own = [results[name]["student" if source == "model" else "student_to_teacher"][key] for name in STUDENTS]
        lines.append(f"| {label} | {first} | " + " | ".join(_cell(v) for v in own) + " |")
    header = ["category", "examples"]
    for metric in ("EM", "F1"):
        header += [f"teacher {metric}", *(f"{name} {metric}" for name in STUDENTS)]
    lines += ["", "| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for category, group in results[STUDENTS[0]]["categories"].items():
        cells = [category, str(group["examples"])]
        for key in ("exact_match", "token_f1"):
            cells.append(f"{group['teacher'][key]:.4f}")
            cells += [f"{results[name]['categories'][category]['student'][key]:.4f}" for name in STUDENTS]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--distilled", help="an existing distilled student (default: train one)")
    parser.add_argument("--finetuned", help="an existing fine-tuned student (default: train one)")
    parser.add_argument("--max_steps", type=int, default=None, help="override the recipe's max_steps when training")
    parser.add_argument("--max_eval_samples", type=int, default=None, help="evaluate on the first N eval examples")
    parser.add_argument("--max_new_tokens", type=int, default=32, help="greedy tokens per answer (default: 32)")
    opts = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.set_verbosity_error()
    evaluation = [] if opts.max_eval_samples is None else ["--max_eval_samples", str(opts.max_eval_samples)]
    common = ["--disable_tqdm", "true", *evaluation]
    if opts.max_steps is not None:
        common += ["--max_steps", str(opts.max_steps)]

    given = {"distilled": opts.distilled, "fine-tuned": opts.finetuned}
    steps = parse_recipe(RECIPE, common)[2].max_steps
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folders = {name: given[name] or os.path.join(tmp, name) for name in STUDENTS}
        extra = {"distilled": [], "fine-tuned": ["--alpha", "1.0"]}
        for name in STUDENTS:
            if given[name] is None:
                seconds[f"train {name}"] = train([*common, "--output_dir", folders[name], *extra[name]])
        results = {}
        for name in STUDENTS:
            start = time.perf_counter()
            results[name] = run_evaluation(RECIPE, evaluation, model=folders[name], max_new_tokens=opts.max_new_tokens)
            seconds[f"evaluate {name}"] = time.perf_counter() - start

    first = results[STUDENTS[0]]
    sources = ", ".join(f"{name} {given[name] or f'trained here ({steps} steps)'}" for name in STUDENTS)
    print(
        f"\n{RECIPE}, {first['split']} split: {first['examples']} examples, greedy completions of up to "
        f"{opts.max_new_tokens} new tokens; students: {sources}"
    )
    print("\n".join(["", *tables(results)]))
    speeds = [
        f"{name} {format_number(r['student']['tokens_per_second'])} vs teacher "
        f"{format_number(r['teacher']['tokens_per_second'])} ({r['student_to_teacher']['speedup']:.1f}x)"
        for name, r in results.items()
    ]
    print(f"\ngreedy tokens/s, each student with the teacher in its own run: {'; '.join(speeds)}")
    print("wall times: " + ", ".join(f"{step} {s:.0f} s" for step, s in seconds.items()))


if __name__ == "__main__":
    main()
