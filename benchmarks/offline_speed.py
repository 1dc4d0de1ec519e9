"""Does an offline teacher make distillation as cheap as fine-tuning? Training step time on the demo recipe with the
online teacher, with a teacher cache (`teacher_cache_dir`) and as plain fine-tuning (`alpha=1.0`), side by side.

    python benchmarks/offline_speed.py [--recipe recipes/demo/distill.yaml] [--max_steps N] [--repeats R]
        [--skip_steps S] [--top_k K] [--key value ...]

Builds the cache once (timed), then runs the three configurations interleaved, `--repeats` times each, so that the
load of a shared machine hits all of them alike. A step's time runs from the end of the previous optimizer step to
the end of this one: it includes fetching and collating the batch, which is where the cached top-k is laid out;
"compute only" is the part from `on_step_begin`, which `Trainer` calls only once the batch is there. Further
`--key value` arguments override the recipe for every run and for the cache build (which must see the same data as
training).

Prints the median step time of each configuration, its ratio to fine-tuning, the cache's build time and size, and
whether cached distillation meets the target of 1.15x fine-tuning.
"""

import argparse
import os
import statistics
import tempfile
import time

import datasets
from step_timer import StepTimer
from transformers import PrinterCallback
from transformers.utils import logging

from hf_distill.commands.cache_teacher import build_teacher_cache
from hf_distill.commands.recipe import parse_recipe
from hf_distill.commands.train import build_trainer
from hf_distill.teachers.cache_builder import cache_size

TARGET = 1.15


def timed_training(recipe: str, overrides: list[str]) -> StepTimer:
    """Train as `hf-distill train` would, with a `StepTimer`; the final evaluation and save are not measured."""
    timer = StepTimer()
    trainer = build_trainer(*parse_recipe(recipe, overrides), callbacks=[timer])
    # disable_tqdm makes Trainer print every log instead; the benchmark prints its own progress.
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return timer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--recipe", default="recipes/demo/distill.yaml")
    parser.add_argument("--max_steps", type=int, default=150, help="optimizer steps of each run (default: 150)")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each configuration (default: 5)")
    parser.add_argument(
        "--skip_steps", type=int, default=5, help="first steps of each run left out as warm-up (default: 5)"
    )
    parser.add_argument("--top_k", type=int, default=64, help="teacher tokens cached per target token (default: 64)")
    opts, extra = parser.parse_known_args()
    if opts.max_steps <= opts.skip_steps or opts.repeats < 1:
        parser.error("need max_steps > skip_steps and repeats >= 1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    datasets.disable_progress_bars()

    common = [
        *("--max_steps", str(opts.max_steps), "--disable_tqdm", "true", "--report_to", "none"),
        *("--save_strategy", "no", "--eval_strategy", "no", "--metrics_csv", "false"),
        *extra,
    ]
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = os.path.join(tmp, "cache")
        start = time.perf_counter()
        build_teacher_cache(*parse_recipe(opts.recipe, extra), cache_dir, opts.top_k)
        build_seconds = time.perf_counter() - start
        cache_bytes, target_tokens = cache_size(cache_dir)

        configurations = {
            "online teacher": [],
            f"cached teacher (top-{opts.top_k})": ["--teacher_cache_dir", cache_dir],
            "plain fine-tuning (alpha=1)": ["--alpha", "1.0"],
        }
        names = list(configurations)
        _, cached, finetune = names
        steps = {name: [] for name in names}
        compute = {name: [] for name in names}
        per_run = {name: [] for name in names}
        for repeat in range(opts.repeats):
            # Rotating the order as well keeps any cost of running first or after a given run off one configuration.
            for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
                output_dir = os.path.join(tmp, f"run-{repeat}-{names.index(name)}")
                timer = timed_training(opts.recipe, [*common, "--output_dir", output_dir, *configurations[name]])
                kept = timer.step_times[opts.skip_steps :]
                steps[name] += kept
                compute[name] += timer.compute_times[opts.skip_steps :]
                per_run[name].append(statistics.median(kept))
                print(f"repeat {repeat + 1}/{opts.repeats}, {name}: median step {1000 * per_run[name][-1]:.1f} ms")

    _, _, config = parse_recipe(opts.recipe, common)
    medians = {name: statistics.median(steps[name]) for name in names}
    baseline = medians[finetune]
    print(
        f"\nrecipe: {opts.recipe}, max_steps: {config.max_steps} (first {opts.skip_steps} left out), repeats: "
        f"{opts.repeats}, per_device_train_batch_size: {config.per_device_train_batch_size}, "
        f"loss_chunk_size: {config.effective_loss_chunk_size}, teacher_cache_mode: {config.teacher_cache_mode}"
    )
    print("| run | median step time (ms) | per-run medians (ms) | compute only (ms) | ratio to plain fine-tuning |")
    print("|---|---|---|---|---|")
    for name in names:
        runs = ", ".join(f"{1000 * t:.1f}" for t in per_run[name])
        print(
            f"| {name} | {1000 * medians[name]:.1f} | {runs} | {1000 * statistics.median(compute[name]):.1f} | "
            f"{medians[name] / baseline:.3f} |"
        )
    print(
        f"\ncache: built in {build_seconds:.1f} s, {cache_bytes:,} bytes for {target_tokens:,} target tokens "
        f"({cache_bytes / target_tokens:.0f} bytes/token)"
    )
    ratio = medians[cached] / baseline
    verdict = "meets" if ratio <= TARGET else "misses"
    print(f"cached distillation / plain fine-tuning: {ratio:.3f}x ({verdict} the target of {TARGET}x)")


if __name__ == "__main__":
    main()
