"""How much does `DistillTrainer` add to the work an off-policy distillation step must do? Median optimizer-step time
of `DistillTrainer` against a bare loop doing exactly that work on the same batches, and against TRL's `GKDTrainer`
with `lmbda=0` (off-policy) at equal settings, interleaved in one process.

    pip install -e ".[bench]"
    python benchmarks/step_overhead.py [--max_steps N] [--skip_steps S] [--repeats R] [--batch_size B]
        [--seq_len L] [--vocab V] [--student_hidden H] [--student_layers N] [--teacher_hidden H]
        [--teacher_layers N] [--threads T] [--profile]

The default sizes are scaled down from issue 18's (a ~20M student and a ~80M teacher, 4 x 256 tokens) to finish in a
few minutes on 2 shared CPU cores: a 19.5M student (hidden 256, 4 layers) and a 51.6M teacher (hidden 512, 6
layers), vocabulary 32000, 2 x 256 tokens; the LM heads (32000 x 256 and 32000 x 512) and the divergence over 32000
classes make most of the work, as at real scale. The models are Llama configs with random weights (the same seed for
every run, so every run starts from the same student and teacher) and untied heads; the batches are random token
ids, the first eighth of each row a prompt (label -100). The settings are equal for all three: forward KL at
temperature 1 with the divergence alone (hf_distill `alpha=0`; GKD's loss has no CE term, `beta=0` is forward KL),
float32, no gradient checkpointing, no dropout, the optimizer `Trainer` builds from the same arguments (AdamW),
gradient clipping at 1.0, a constant learning rate, every step's loss divided by its target-token count.

- bare loop: student backbone forward, teacher backbone forward under `no_grad`, `hf_distill.losses.
  linear_distillation_loss` (the chunked loss `DistillTrainer` trains with, `loss_chunk_size` 256) divided by the
  step's target tokens, backward, clipping, optimizer step, zeroing the gradients: the physical minimum of this loss.
- `DistillTrainer`: the same through `Trainer.train`.
- TRL `GKDTrainer`, `lmbda=0`: full logits of both models and its dense generalised JSD.

A step's time runs from the end of the previous optimizer step to the end of this one (the trainers' data loading
included; the bare loop indexes prepared batches); its CPU time (`time.process_time`, this process alone) is printed
beside it, as the measure the load of other processes on a shared machine changes least. The three alternate, the
order rotating each repeat, so the load of a shared machine hits them alike. The thread count is set before torch
is imported (`--threads`, default 1). Prints a Markdown table of median step times, the mean training loss of each
(the same from the same start: the same work), and the ratios against the targets (DistillTrainer / bare loop <=
1.05, DistillTrainer / TRL <= 1.0). `--profile` prints the top functions, in CPU time, of one extra bare-loop run and
one extra `DistillTrainer` run (cProfile).
"""

import os
import sys


def _threads() -> str:
    """`--threads` read before torch is imported, which fixes its thread pool size."""
    for i, arg in enumerate(sys.argv):
        if arg == "--threads" and i + 1 < len(sys.argv):
            return sys.argv[i + 1]
        if arg.startswith("--threads="):
            return arg.split("=", 1)[1]
    return "1"


os.environ["OMP_NUM_THREADS"] = _threads()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import cProfile  # noqa: E402
import io  # noqa: E402
import pstats  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import datasets  # noqa: E402
import side_by_side  # noqa: E402
import torch  # noqa: E402
from step_timer import StepTimer  # noqa: E402
from transformers import (  # noqa: E402
    AutoTokenizer,
    LlamaForCausalLM,
    PrinterCallback,
    Trainer,
    TrainingArguments,
)
from transformers.utils import logging  # noqa: E402

from hf_distill import DistillConfig, DistillTrainer  # noqa: E402
from hf_distill.data.datasets import DistillDataCollator  # noqa: E402
from hf_distill.losses import LOSS_CHUNK_SIZE, linear_distillation_loss  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Only its padding id is read (the collator pads with it; the batches are all full length).
TOKENIZER = os.path.join(ROOT, "recipes", "demo", "tokenizer")
BARE, HF_DISTILL, TRL = "bare loop", "hf_distill DistillTrainer", "TRL GKDTrainer (lmbda=0)"
TARGETS = {BARE: 1.05, TRL: 1.0}
MAX_GRAD_NORM = 1.0


def llama(hidden: int, layers: int, vocab: int, seed: int) -> LlamaForCausalLM:
    return side_by_side.llama(hidden, layers, vocab, seed, heads=max(hidden // 64, 1), max_positions=4096)


def make_dataset(opts) -> datasets.Dataset:
    generator = torch.Generator().manual_seed(0)
    rows = opts.max_steps * opts.batch_size
    ids = torch.randint(3, opts.vocab, (rows, opts.seq_len), generator=generator)
    labels = ids.clone()
    labels[:, : opts.seq_len // 8] = -100
    return datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist()})


def common_args(opts, output_dir: str) -> dict:
    return dict(
        side_by_side.equal_training_args(opts, output_dir),
        max_grad_norm=MAX_GRAD_NORM,
        train_sampling_strategy="sequential",
    )


class Models:
    def __init__(self, opts):
        self.opts = opts

    def __call__(self) -> tuple[LlamaForCausalLM, LlamaForCausalLM]:
        o = self.opts
        student = llama(o.student_hidden, o.student_layers, o.vocab, seed=1)
        teacher = llama(o.teacher_hidden, o.teacher_layers, o.vocab, seed=2)
        return student, teacher


def run_hf_distill(opts, models, dataset, tokenizer, output_dir) -> tuple[list[float], float]:
    student, teacher = models()
    config = DistillConfig(
        **common_args(opts, output_dir),
        alpha=0.0,
        loss_type="forward_kl",
        metrics_csv=False,
        track_samples=[],
    )
    return run_trainer(
        DistillTrainer,
        model=student,
        teacher_model=teacher,
        args=config,
        train_dataset=dataset,
        data_collator=DistillDataCollator(tokenizer),
        processing_class=tokenizer,
    )


def run_trl(opts, models, dataset, tokenizer, output_dir) -> tuple[list[float], float]:
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    student, teacher = models()
    config = GKDConfig(**common_args(opts, output_dir), lmbda=0.0, beta=0.0, max_length=opts.seq_len)
    return run_trainer(
        GKDTrainer,
        model=student,
        teacher_model=teacher,
        args=config,
        train_dataset=dataset,
        data_collator=DistillDataCollator(tokenizer),
        processing_class=tokenizer,
    )


def run_trainer(cls, **kwargs) -> tuple[list[float], list[float], float]:
    """Each step's wall and CPU time, and the mean training loss."""
    timer = StepTimer()
    trainer = cls(callbacks=[timer], **kwargs)
    # disable_tqdm makes Trainer print every log instead; the benchmark prints its own progress.
    trainer.remove_callback(PrinterCallback)
    output = trainer.train()
    return timer.step_times, timer.cpu_times, output.training_loss


def run_bare(opts, models, dataset, tokenizer, output_dir) -> tuple[list[float], float]:
    student, teacher = models()
    student.train()
    teacher.eval().requires_grad_(False)
    args = TrainingArguments(**{k: v for k, v in common_args(opts, output_dir).items() if k != "temperature"})
    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, student)
    optimizer = optimizer_cls(student.parameters(), **optimizer_kwargs)
    collate = DistillDataCollator(tokenizer)
    batches = [
        collate([dataset[i] for i in range(start, start + opts.batch_size)])
        for start in range(0, opts.max_steps * opts.batch_size, opts.batch_size)
    ]
    times, cpu_times, losses = [], [], []
    last, last_cpu = time.perf_counter(), time.process_time()
    for batch in batches:
        # No KV cache, as DistillTrainer's forwards: training reads none, and building one costs time.
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
        targets = batch["labels"][:, 1:]
        hidden = student.model(**inputs).last_hidden_state[:, :-1]
        with torch.no_grad():
            teacher_hidden = teacher.model(**inputs).last_hidden_state[:, :-1]
        loss = linear_distillation_loss(
            hidden,
            student.lm_head.weight,
            teacher_hidden,
            teacher.lm_head.weight,
            targets,
            alpha=0.0,
            loss_type="forward_kl",
            temperature=1.0,
        ) / targets.ne(-100).sum().clamp(min=1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        now, cpu = time.perf_counter(), time.process_time()
        times.append(now - last)
        cpu_times.append(cpu - last_cpu)
        last, last_cpu = now, cpu
    return times, cpu_times, torch.stack(losses).mean().item()


RUNNERS = {BARE: run_bare, HF_DISTILL: run_hf_distill, TRL: run_trl}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--max_steps", type=int, default=5, help="optimizer steps of each run (default: 5)")
    parser.add_argument("--skip_steps", type=int, default=1, help="warm-up steps left out of each run (default: 1)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each configuration (default: 2)")
    parser.add_argument("--batch_size", type=int, default=2, help="sequences per step (default: 2)")
    parser.add_argument("--seq_len", type=int, default=256, help="(default: 256)")
    parser.add_argument("--vocab", type=int, default=32000, help="(default: 32000)")
    parser.add_argument("--student_hidden", type=int, default=256, help="(default: 256)")
    parser.add_argument("--student_layers", type=int, default=4, help="(default: 4)")
    parser.add_argument("--teacher_hidden", type=int, default=512, help="(default: 512)")
    parser.add_argument("--teacher_layers", type=int, default=6, help="(default: 6)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, set before import (default: 1)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile one bare-loop and one DistillTrainer run (cProfile, CPU time)",
    )
    opts = parser.parse_args(argv)
    if opts.max_steps <= opts.skip_steps or opts.repeats < 1:
        parser.error("need max_steps > skip_steps and repeats >= 1")
    return opts


def main() -> None:
    opts = parse_args()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    datasets.disable_progress_bars()
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    dataset = make_dataset(opts)
    models = Models(opts)
    sizes = [sum(p.numel() for p in m.parameters()) / 1e6 for m in models()]
    names = list(RUNNERS)
    steps = {name: [] for name in names}
    per_run = {name: [] for name in names}
    losses = {name: [] for name in names}
    cpu = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(opts.repeats):
            shift = repeat % len(names)
            for name in names[shift:] + names[:shift]:
                output_dir = os.path.join(tmp, f"run-{repeat}-{names.index(name)}")
                times, cpu_times, loss = RUNNERS[name](opts, models, dataset, tokenizer, output_dir)
                kept = times[opts.skip_steps :]
                cpu[name] += cpu_times[opts.skip_steps :]
                steps[name] += kept
                losses[name].append(loss)
                per_run[name].append(statistics.median(kept))
                print(f"repeat {repeat + 1}/{opts.repeats}, {name}: median step {1000 * per_run[name][-1]:.1f} ms")
        if opts.profile:
            for name in (BARE, HF_DISTILL):
                # CPU time of this process: what other processes' load changes least.
                profiler = cProfile.Profile(time.process_time)
                profiler.runcall(RUNNERS[name], opts, models, dataset, tokenizer, os.path.join(tmp, "profile"))
                out = io.StringIO()
                pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
                title = f"cProfile (CPU time) of {name}, {opts.max_steps} steps, models built inside"
                print(f"\n### {title}\n{out.getvalue()}")

    medians = {name: statistics.median(steps[name]) for name in names}
    cpu_medians = {name: statistics.median(cpu[name]) for name in names}
    tokens = opts.batch_size * opts.seq_len
    print(
        f"\nstudent {sizes[0]:.1f}M parameters (Llama, hidden {opts.student_hidden}, {opts.student_layers} layers), "
        f"teacher {sizes[1]:.1f}M (hidden {opts.teacher_hidden}, {opts.teacher_layers} layers), vocab {opts.vocab}, "
        f"untied heads; batch {opts.batch_size} x {opts.seq_len} tokens (the first {opts.seq_len // 8} of each row a "
        f"prompt), float32; {opts.max_steps} steps per run (first {opts.skip_steps} left out) x {opts.repeats} runs "
        f"each, OMP_NUM_THREADS={opts.threads}, loss_chunk_size {LOSS_CHUNK_SIZE}"
    )
    print(
        "| run | median step time (ms) | per-run medians (ms) | tokens/s | mean loss | DistillTrainer / this | "
        "median CPU time per step (ms) | DistillTrainer / this, CPU time |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for name in names:
        runs = ", ".join(f"{1000 * t:.1f}" for t in per_run[name])
        print(
            f"| {name} | {1000 * medians[name]:.1f} | {runs} | {tokens / medians[name]:.0f} | "
            f"{statistics.mean(losses[name]):.6f} | {medians[HF_DISTILL] / medians[name]:.3f} | "
            f"{1000 * cpu_medians[name]:.1f} | {cpu_medians[HF_DISTILL] / cpu_medians[name]:.3f} |"
        )
    print()
    for name, target in TARGETS.items():
        ratio = medians[HF_DISTILL] / medians[name]
        verdict = "meets" if ratio <= target else "misses"
        cpu_ratio = cpu_medians[HF_DISTILL] / cpu_medians[name]
        print(f"DistillTrainer / {name}: {ratio:.3f}x ({verdict} the target of {target}x); CPU time {cpu_ratio:.3f}x")


if __name__ == "__main__":
    main()
