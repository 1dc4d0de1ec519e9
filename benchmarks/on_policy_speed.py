"""Is an on-policy step of `DistillTrainer` as fast as TRL's, and what does vLLM change? Median step time of
`DistillTrainer` (`lmbda=1`, greedy) generating with transformers' `generate` and with vLLM (`use_vllm: true`)
against TRL's `DistillationTrainer`, on the same student, teacher, prompts, `max_new_tokens`, greedy decoding and
batch size, interleaved in one process.

    pip install -e ".[bench]"
    python benchmarks/on_policy_speed.py [--max_steps N] [--skip_steps S] [--repeats R] [--batch_size B]
        [--max_new_tokens M] [--student_hidden H] [--teacher_hidden H] [--profile]

Both trainers get models built from the same Llama configs and seed (random weights, so every run of either starts
from identical students and teachers), the demo tokenizer, and the demo's training questions as prompts (rendered by
the chat template with its generation prompt; the script checks that both trainers see the same prompt tokens).
Equal settings: reverse KL at temperature 1 (TRL `beta=1.0`, hf_distill `loss_type="reverse_kl"`; on-policy steps
train on the divergence alone), greedy decoding (`generation_temperature=0` / `do_sample=False`), no gradient
checkpointing, float32, the chunked loss in both, sequential prompt order, one thread (`OMP_NUM_THREADS=1`, set
before torch is imported, so the load of a shared 2-core machine does not decide the result).

A step's time runs from the end of the previous optimizer step to the end of this one, generation included; its CPU
time (`time.process_time`, this process alone) is printed beside it, as the measure the load of other processes on a
shared machine changes least. The runs alternate between the two trainers (and which goes first), `--repeats`
times. Prints a Markdown table of median step times, their ratios, and the mean completion length each trainer
generated (equal work needs equal lengths). For the two `DistillTrainer` rows it also prints the generation speed
(completion tokens per second of the backend's `complete` call, the weight sync left out) and the median seconds of
the per-step weight sync into the vLLM engine (`vllm_sync_seconds`; the transformers backend has none), both
measured around the trainer's generation backend (`generation_probe.GenerationProbe`), and their ratios to the
transformers backend. The vLLM engine starts when its trainer is built, outside the steps; the build times are printed
below the table. Without vLLM installed the vLLM row is left out with a printed note. TRL's own `use_vllm`
(colocate) is not in the table: on CPU its first weight sync fails (`model.load_weights` on vLLM's model: vLLM's CPU
linear layers have no `weight_loader`; TRL 1.16, vLLM 0.32, student loaded from a folder as TRL's colocate mode
needs), and the script prints that line.
`--profile` prints the top functions of one extra run of each under cProfile.
"""

import os

# Before torch is imported: the thread count is fixed for both trainers alike.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import cProfile  # noqa: E402
import functools  # noqa: E402
import importlib.util  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import pstats  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import datasets  # noqa: E402
import torch  # noqa: E402
from generation_probe import GenerationProbe  # noqa: E402
from side_by_side import equal_training_args, llama  # noqa: E402
from step_timer import StepTimer  # noqa: E402
from transformers import AutoTokenizer, PrinterCallback  # noqa: E402
from transformers.utils import logging  # noqa: E402

from hf_distill import DistillConfig, DistillTrainer  # noqa: E402
from hf_distill.data.datasets import DistillDataCollator  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = os.path.join(ROOT, "recipes", "demo", "tokenizer")
TRAIN_DATA = os.path.join(ROOT, "recipes", "demo", "data", "train.jsonl")
HF_DISTILL, VLLM, TRL = "hf_distill DistillTrainer", "hf_distill DistillTrainer, use_vllm", "TRL DistillationTrainer"
TRL_VLLM_NOTE = (
    "TRL DistillationTrainer use_vllm (colocate): not run: on CPU its first weight sync fails (TRL 1.16, vLLM 0.32: "
    "model.load_weights on vLLM's model raises AttributeError: 'Parameter' object has no attribute 'weight_loader')"
)


def prompt_messages(count: int) -> list[list[dict]]:
    """The first `count` demo training conversations without their answers."""
    with open(TRAIN_DATA) as f:
        rows = [json.loads(line) for line, _ in zip(f, range(count))]
    return [row["messages"][:-1] for row in rows]


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]


def hf_distill_trainer(opts, models, tokenizer, messages, output_dir, callbacks, use_vllm=False):
    student, teacher = models()
    ids = [prompt_ids(tokenizer, m) for m in messages]
    # Prompt-only rows (no target token), as `hf_distill.data` tokenizes conversations ending with a user turn.
    dataset = datasets.Dataset.from_dict(
        {"input_ids": ids, "labels": [[-100] * len(row) for row in ids], "id": [str(i) for i in range(len(ids))]}
    )
    config = DistillConfig(
        **equal_training_args(opts, output_dir),
        lmbda=1.0,
        max_new_tokens=opts.max_new_tokens,
        generation_temperature=0.0,
        loss_type="reverse_kl",
        train_sampling_strategy="sequential",
        metrics_csv=False,
        track_samples=[],
        use_vllm=use_vllm,
    )
    return DistillTrainer(
        model=student,
        teacher_model=teacher,
        args=config,
        train_dataset=dataset,
        data_collator=DistillDataCollator(tokenizer),
        processing_class=tokenizer,
        callbacks=callbacks,
    )


def trl_trainer(opts, models, tokenizer, messages, output_dir, callbacks):
    from trl import DistillationConfig, DistillationTrainer

    student, teacher = models()
    config = DistillationConfig(
        **equal_training_args(opts, output_dir),
        max_completion_length=opts.max_new_tokens,
        generation_kwargs={"do_sample": False},
        beta=1.0,
        shuffle_dataset=False,
    )
    return DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=config,
        train_dataset=datasets.Dataset.from_dict({"prompt": messages}),
        processing_class=tokenizer,
        callbacks=callbacks,
    )


def completion_length(trainer) -> float:
    for log in trainer.state.log_history:
        for key in ("completion_length", "completions/mean_length"):
            if key in log:
                return log[key]
    raise RuntimeError("no completion length was logged")


def check_same_prompts(tokenizer, messages, opts) -> None:
    """TRL renders conversational prompts with the chat template's generation prompt, as this script does for
    hf_distill; a difference would time different work."""
    from trl.data_utils import apply_chat_template

    for m in messages[: opts.batch_size]:
        text = apply_chat_template({"prompt": m}, tokenizer)["prompt"]
        mine = prompt_ids(tokenizer, m)
        theirs = tokenizer(text=text, add_special_tokens=False)["input_ids"]
        if mine != theirs:
            raise RuntimeError(f"the two trainers would see different prompt tokens: {mine} vs {theirs}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--max_steps", type=int, default=30, help="optimizer steps of each run (default: 30)")
    parser.add_argument("--skip_steps", type=int, default=3, help="warm-up steps left out of each run (default: 3)")
    parser.add_argument("--repeats", type=int, default=4, help="runs of each trainer (default: 4)")
    parser.add_argument("--batch_size", type=int, default=8, help="prompts per step (default: 8)")
    parser.add_argument("--max_new_tokens", type=int, default=32, help="(default: 32)")
    parser.add_argument(
        "--student_hidden",
        type=int,
        default=256,
        help="student width, 4 layers, 4 heads; vLLM's CPU attention needs a head size of 32 or more (default: 256)",
    )
    parser.add_argument("--teacher_hidden", type=int, default=384, help="teacher width, 6 layers (default: 384)")
    parser.add_argument("--profile", action="store_true", help="also profile one run of each trainer (cProfile)")
    opts = parser.parse_args()
    if opts.max_steps <= opts.skip_steps or opts.repeats < 1:
        parser.error("need max_steps > skip_steps and repeats >= 1")
    torch.set_num_threads(1)
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    datasets.disable_progress_bars()

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    messages = prompt_messages(opts.max_steps * opts.batch_size)
    check_same_prompts(tokenizer, messages, opts)
    vocab = len(tokenizer)

    def models():
        student = llama(opts.student_hidden, 4, vocab, 1, heads=4, max_positions=256)
        teacher = llama(opts.teacher_hidden, 6, vocab, 2, heads=4, max_positions=256)
        return student, teacher

    student, teacher = models()
    sizes = [sum(p.numel() for p in m.parameters()) / 1e6 for m in (student, teacher)]
    builders = {HF_DISTILL: hf_distill_trainer, TRL: trl_trainer}
    if importlib.util.find_spec("vllm"):
        builders[VLLM] = functools.partial(hf_distill_trainer, use_vllm=True)
    else:
        print(f"vLLM is not installed: the {VLLM} row is skipped (bash scripts/install_vllm.sh adds it)")
    print(TRL_VLLM_NOTE)
    names = list(builders)
    steps = {name: [] for name in names}
    cpu = {name: [] for name in names}
    per_run = {name: [] for name in names}
    lengths = {name: [] for name in names}
    builds = {name: [] for name in names}
    generation = {name: [] for name in names if name != TRL}  # (tokens, seconds) per kept step
    syncs = {name: [] for name in names if name == VLLM}  # the transformers backend has no engine to sync
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(opts.repeats):
            shift = repeat % len(names)
            for name in names[shift:] + names[:shift]:
                timer = StepTimer()
                output_dir = os.path.join(tmp, f"run-{repeat}-{names.index(name)}")
                began = time.perf_counter()
                trainer = builders[name](opts, models, tokenizer, messages, output_dir, [timer])
                builds[name].append(time.perf_counter() - began)
                probe = GenerationProbe(trainer) if name in generation else None
                # disable_tqdm makes Trainer print every log instead; the benchmark prints its own progress.
                trainer.remove_callback(PrinterCallback)
                trainer.train()
                kept = timer.step_times[opts.skip_steps :]
                steps[name] += kept
                cpu[name] += timer.cpu_times[opts.skip_steps :]
                per_run[name].append(statistics.median(kept))
                lengths[name].append(completion_length(trainer))
                if name in syncs:
                    syncs[name] += probe.sync_seconds[opts.skip_steps :]
                if probe:
                    generation[name] += zip(
                        probe.tokens[opts.skip_steps :], probe.generation_seconds[opts.skip_steps :]
                    )
                print(f"repeat {repeat + 1}/{opts.repeats}, {name}: median step {1000 * per_run[name][-1]:.1f} ms")
                del trainer, probe  # a vLLM engine's KV cache is freed with its trainer
        if opts.profile:
            for name in names:
                trainer = builders[name](opts, models, tokenizer, messages, os.path.join(tmp, f"profile-{name}"), [])
                profiler = cProfile.Profile()
                profiler.runcall(trainer.train)
                out = io.StringIO()
                pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(25)
                print(f"\n### cProfile of {name} ({opts.max_steps} steps)\n{out.getvalue()}")
                del trainer

    medians = {name: statistics.median(steps[name]) for name in names}
    cpu_medians = {name: statistics.median(cpu[name]) for name in names}
    speed = {name: sum(t for t, _ in rows) / sum(s for _, s in rows) for name, rows in generation.items()}
    sync_ms = {name: 1000 * statistics.median(values) for name, values in syncs.items()}
    print(
        f"\nstudent {sizes[0]:.1f}M parameters (Llama, hidden {opts.student_hidden}, 4 layers), teacher "
        f"{sizes[1]:.1f}M (hidden {opts.teacher_hidden}, 6 layers), vocab {vocab}; batch {opts.batch_size} prompts, "
        f"max_new_tokens {opts.max_new_tokens}, greedy; {opts.max_steps} steps per run (first {opts.skip_steps} "
        f"left out) x {opts.repeats} runs each, OMP_NUM_THREADS=1"
    )
    print(
        "| trainer | median step time (ms) | per-run medians (ms) | median CPU time per step (ms) | "
        "mean completion length | generation tokens/s | median sync per step (ms) | ratio to TRL | "
        "CPU-time ratio to TRL | step time / HF generate | generation speed / HF generate |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in names:
        runs = ", ".join(f"{1000 * t:.1f}" for t in per_run[name])
        tokens_s = f"{speed[name]:.0f}" if name in speed else "-"
        sync = f"{sync_ms[name]:.1f}" if name in sync_ms else "-"
        speed_ratio = f"{speed[name] / speed[HF_DISTILL]:.3f}" if name in speed else "-"
        print(
            f"| {name} | {1000 * medians[name]:.1f} | {runs} | {1000 * cpu_medians[name]:.1f} | "
            f"{statistics.mean(lengths[name]):.1f} | {tokens_s} | {sync} | {medians[name] / medians[TRL]:.3f} | "
            f"{cpu_medians[name] / cpu_medians[TRL]:.3f} | {medians[name] / medians[HF_DISTILL]:.3f} | {speed_ratio} |"
        )
    print(
        "\nmedian trainer build (s): "
        + ", ".join(f"{name} {statistics.median(builds[name]):.2f}" for name in names)
        + (" (the vLLM one starts its engine)" if VLLM in names else "")
    )
    ratio = medians[HF_DISTILL] / medians[TRL]
    verdict = "meets" if ratio <= 1.0 else "misses"
    print(f"hf_distill / TRL median on-policy step time: {ratio:.3f}x ({verdict} the target of 1.0x)")
    print(f"hf_distill / TRL median CPU time per step: {cpu_medians[HF_DISTILL] / cpu_medians[TRL]:.3f}x")
    if VLLM in names:
        print(
            f"use_vllm / HF generate: median step time {medians[VLLM] / medians[HF_DISTILL]:.3f}x, "
            f"generation tokens/s {speed[VLLM] / speed[HF_DISTILL]:.3f}x, sync {sync_ms[VLLM]:.1f} ms per step"
        )


if __name__ == "__main__":
    main()
