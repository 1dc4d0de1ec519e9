"""GPU benchmark of on-policy distillation steps generating with vLLM (`use_vllm: true`) against transformers'
`generate`: generation tokens/s and step time, the same `DistillTrainer` otherwise.

    bash scripts/install_vllm.sh && python benchmarks/gpu/on_policy_vllm.py   # one CUDA GPU, bf16
    python benchmarks/gpu/on_policy_vllm.py --smoke    # tiny sizes on CPU (float32), seconds: the test suite runs this

The student is built from the Qwen2.5-0.5B config and the teacher from the Qwen2.5-7B one (`--teacher` picks another
of `qwen2.5.json`), with random weights built on the GPU as `run.py` builds them (nothing is downloaded), both in
bf16 (the student's weights are bf16, so its vLLM engine is too: the engine takes the student's dtype). The
tokenizer is a synthetic word-level one of the models' 151936 ids (the demo tokenizer has 847, and both backends
decode what they generate). Each step: `--batch_size` (64) random prompts of `--prompt_len` (128) tokens, greedy,
`--max_new_tokens` (256) new tokens with `min_new_tokens` equal to it (random weights would otherwise stop at
different places: both backends write the same number of tokens), reverse KL, one micro-batch (the whole batch goes
to `generate` and to the engine in one call), no gradient checkpointing.

The two trainers alternate (`--repeats` runs each, which goes first alternating); each run has `--warmup_steps` steps
left out and `--timed_steps` timed. Step time: from the end of one optimizer step to the end of the next, generation
and the engine's weight sync inside (CUDA synchronised); generation tokens/s: completion tokens over the seconds of
the backend's `complete` call, the sync left out (`generation_probe.GenerationProbe`); sync: median seconds per step
(`vllm_sync_seconds`). The engine starts when its trainer is built, outside the steps; build times are printed. A run
that would end past `--budget_s` (default 480 s after the start, estimated from the one before it of the same
backend, as `run.py`'s `Budget` does) is skipped and the table says so. Targets: generation >= 3x faster, step >= 2x.

Prints one Markdown table and writes it to `benchmarks/results/on_policy_vllm_gpu.md` (`--output` to change; the
smoke run writes only with `--output`). Without CUDA (and without `--smoke`), or without vLLM, it stops at once.
"""

import argparse
import gc
import importlib.util
import os
import statistics
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # benchmarks/: the step timer and the generation probe
from generation_probe import GenerationProbe  # noqa: E402
from run import CONFIGS, ROOT, Budget, build  # noqa: E402
from step_timer import StepTimer  # noqa: E402

HF, VLLM = "HF generate", "vLLM (use_vllm)"
TARGETS = {"generation": 3.0, "step": 2.0}
# vLLM's CPU attention takes head sizes of 32 or more: the smoke student's is 32 (run.py's tiny one has 16).
SMOKE_STUDENT = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
    vocab_size=1024, tie_word_embeddings=True, max_position_embeddings=256,
)  # fmt: skip
SMOKE_TEACHER = {**SMOKE_STUDENT, "num_hidden_layers": 2, "tie_word_embeddings": False}
PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"


class SyncedStepTimer(StepTimer):
    """`StepTimer` whose clock readings wait for the GPU's queued work."""

    def __init__(self, device_sync):
        super().__init__()
        self.device_sync = device_sync

    def on_train_begin(self, args, state, control, **kwargs):
        self.device_sync()
        super().on_train_begin(args, state, control, **kwargs)

    def on_step_end(self, args, state, control, **kwargs):
        self.device_sync()
        super().on_step_end(args, state, control, **kwargs)


def synthetic_tokenizer(vocab: int, folder: str):
    """A word-level tokenizer of `vocab` ids (0-3 special), so that every id a random model writes decodes."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {PAD: 0, BOS: 1, EOS: 2, UNK: 3, **{f"t{i}": i for i in range(4, vocab)}}
    backend = Tokenizer(models.WordLevel(words, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK
    )
    tokenizer.save_pretrained(folder)  # a folder vLLM can load as well
    return PreTrainedTokenizerFast.from_pretrained(folder)


def prompts_dataset(opts, vocab: int):
    """Prompt-only rows (every label -100) of random ids, as `hf_distill.data` tokenizes prompts."""
    import datasets

    rows = (opts.warmup_steps + opts.timed_steps) * opts.batch_size
    ids = torch.randint(4, vocab, (rows, opts.prompt_len), generator=torch.Generator().manual_seed(0)).tolist()
    return datasets.Dataset.from_dict({"input_ids": ids, "labels": [[-100] * opts.prompt_len] * rows})


def trainer_for(use_vllm: bool, opts, device, dtype, teacher, tokenizer, dataset, output_dir):
    from hf_distill import DistillConfig, DistillTrainer
    from hf_distill.data.datasets import DistillDataCollator

    steps = opts.warmup_steps + opts.timed_steps
    student = build(opts.student_config, device, dtype, seed=1)
    config = DistillConfig(
        output_dir=output_dir, use_cpu=device.type != "cuda", per_device_train_batch_size=opts.batch_size,
        gradient_accumulation_steps=1, max_steps=steps, learning_rate=1e-5, lr_scheduler_type="constant",
        bf16=dtype == torch.bfloat16, gradient_checkpointing=False, save_strategy="no", report_to=[],
        disable_tqdm=True, logging_steps=steps, seed=0, data_seed=0, train_sampling_strategy="sequential",
        lmbda=1.0, loss_type="reverse_kl", max_new_tokens=opts.max_new_tokens, generation_temperature=0.0,
        generation_kwargs={"min_new_tokens": opts.max_new_tokens}, metrics_csv=False, track_samples=[],
        use_vllm=use_vllm, **(dict(
            vllm_gpu_memory_utilization=opts.vllm_gpu_memory_utilization,
            vllm_max_model_length=opts.prompt_len + opts.max_new_tokens,
        ) if use_vllm else {}),
    )  # fmt: skip
    return DistillTrainer(
        model=student,
        teacher_model=teacher,
        args=config,
        train_dataset=dataset,
        data_collator=DistillDataCollator(tokenizer),
        processing_class=tokenizer,
    )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU, float32 (seconds)")
    parser.add_argument("--teacher", default="Qwen2.5-7B", choices=sorted(CONFIGS), help="(default: Qwen2.5-7B)")
    parser.add_argument("--batch_size", type=int, default=64, help="prompts per step (default: 64)")
    parser.add_argument("--prompt_len", type=int, default=128, help="(default: 128)")
    parser.add_argument("--max_new_tokens", type=int, default=256, help="(default: 256)")
    parser.add_argument("--warmup_steps", type=int, default=2, help="left out of each run (default: 2)")
    parser.add_argument("--timed_steps", type=int, default=5, help="(default: 5)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each backend (default: 2)")
    parser.add_argument("--vllm_gpu_memory_utilization", type=float, default=0.2, help="(default: 0.2)")
    parser.add_argument("--budget_s", type=float, default=480.0, help="no run may end after this (default: 480)")
    parser.add_argument("--output", default=None, help="default: benchmarks/results/on_policy_vllm_gpu.md")
    opts = parser.parse_args(argv)
    if opts.smoke:
        opts.student_config, opts.teacher_config, opts.teacher = SMOKE_STUDENT, SMOKE_TEACHER, "tiny"
        opts.batch_size, opts.prompt_len, opts.max_new_tokens = 4, 8, 8
        opts.warmup_steps, opts.timed_steps, opts.repeats = 1, 2, 1
    else:
        opts.student_config, opts.teacher_config = CONFIGS["Qwen2.5-0.5B"], CONFIGS[opts.teacher]
    if opts.timed_steps < 1 or opts.repeats < 1:
        parser.error("need timed_steps >= 1 and repeats >= 1")
    return opts


def main(argv=None) -> None:
    opts = parse_args(argv)
    if not opts.smoke and not torch.cuda.is_available():
        sys.exit("error: benchmarks/gpu/on_policy_vllm.py needs a CUDA GPU; --smoke runs it on CPU")
    if not importlib.util.find_spec("vllm"):
        sys.exit("error: benchmarks/gpu/on_policy_vllm.py needs vLLM: bash scripts/install_vllm.sh")
    import datasets
    from transformers import PrinterCallback
    from transformers.utils import logging

    logging.set_verbosity_error()
    datasets.disable_progress_bars()
    budget = Budget(opts.budget_s)
    device = torch.device("cpu" if opts.smoke else "cuda")
    dtype = torch.float32 if opts.smoke else torch.bfloat16
    device_sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    vocab = opts.student_config["vocab_size"]
    teacher = build(opts.teacher_config, device, dtype).eval().requires_grad_(False)
    results = {name: dict(steps=[], tokens=[], seconds=[], syncs=[], builds=[], skipped=None) for name in (HF, VLLM)}
    names = [HF, VLLM]
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = synthetic_tokenizer(vocab, os.path.join(tmp, "tokenizer"))
        dataset = prompts_dataset(opts, vocab)
        for repeat in range(opts.repeats):
            for name in names[repeat % 2 :] + names[: repeat % 2]:
                result = results[name]
                steps = opts.warmup_steps + opts.timed_steps
                reason = budget.skip_reason(name, steps, first_guess=0.0)
                if reason:
                    result["skipped"] = reason
                    continue
                began = time.perf_counter()
                output_dir = os.path.join(tmp, f"{repeat}-{names.index(name)}")
                trainer = trainer_for(name == VLLM, opts, device, dtype, teacher, tokenizer, dataset, output_dir)
                result["builds"].append(time.perf_counter() - began)
                timer, probe = SyncedStepTimer(device_sync), GenerationProbe(trainer, device_sync)
                trainer.add_callback(timer)
                trainer.remove_callback(PrinterCallback)  # disable_tqdm would print every log
                trainer.train()
                skip = opts.warmup_steps
                result["steps"] += timer.step_times[skip:]
                result["tokens"] += probe.tokens[skip:]
                result["seconds"] += probe.generation_seconds[skip:]
                result["syncs"] += probe.sync_seconds[skip:]
                budget.record(name, steps, time.perf_counter() - began, sum(timer.step_times))
                median = statistics.median(timer.step_times[skip:])
                print(f"repeat {repeat + 1}/{opts.repeats}, {name}: median step {median:.3f} s")
                # The next run's vLLM engine checks the free memory when it starts: this one's is released first.
                del trainer, probe, timer
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()

    summary = {}
    for name in names:
        result = results[name]
        if result["steps"]:
            summary[name] = dict(
                step=statistics.median(result["steps"]),
                speed=sum(result["tokens"]) / sum(result["seconds"]),
                length=sum(result["tokens"]) / len(result["tokens"]) / opts.batch_size,
                sync=statistics.median(result["syncs"]) if name == VLLM else None,
                build=statistics.median(result["builds"]),
                runs=len(result["builds"]),
            )
    device_name = "cpu-smoke" if opts.smoke else torch.cuda.get_device_name()
    student_m = sum(p.numel() for p in build(opts.student_config, "meta", dtype).parameters()) / 1e6
    lines = [
        f"# benchmarks/gpu/on_policy_vllm.py on {device_name} ({'float32' if opts.smoke else 'bf16'}, "
        f"torch {torch.__version__})",
        "",
        f"Student {'tiny Qwen2' if opts.smoke else 'Qwen2.5-0.5B config'} ({student_m:,.1f}M parameters), teacher "
        f"{opts.teacher}; batch {opts.batch_size} prompts of {opts.prompt_len} tokens, greedy, {opts.max_new_tokens} "
        f"new tokens (min_new_tokens as many); {opts.timed_steps} timed steps after {opts.warmup_steps} per run, "
        f"{opts.repeats} runs each, interleaved; total {time.perf_counter() - budget.start:.0f} s of the budget's "
        f"{opts.budget_s:.0f} s.",
        "",
        "| backend | median step time (s) | generation tokens/s | mean completion length | median sync per step (ms) "
        "| trainer build (s) | runs | step speed-up over HF | generation speed-up over HF | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name in names:
        if name not in summary:
            lines.append(f"| {name} | - | - | - | - | - | 0 | - | - | {results[name]['skipped']} |")
            continue
        row, ref = summary[name], summary.get(HF)
        step_x = f"{ref['step'] / row['step']:.2f}" if ref else "-"
        speed_x = f"{row['speed'] / ref['speed']:.2f}" if ref else "-"
        sync = f"{1000 * row['sync']:.1f}" if row["sync"] is not None else "-"
        note = results[name]["skipped"] or ""
        lines.append(
            f"| {name} | {row['step']:.3f} | {row['speed']:.0f} | {row['length']:.1f} | {sync} | {row['build']:.1f} | "
            f"{row['runs']} | {step_x} | {speed_x} | {note} |"
        )
    if HF in summary and VLLM in summary:
        lines.append("")
        for what, faster in (
            ("generation", summary[VLLM]["speed"] / summary[HF]["speed"]),
            ("step", summary[HF]["step"] / summary[VLLM]["step"]),
        ):
            verdict = "meets" if faster >= TARGETS[what] else "misses"
            lines.append(f"vLLM / HF generate {what} speed: {faster:.2f}x ({verdict} the target of {TARGETS[what]}x)")
    text = "\n".join(lines) + "\n"
    print(text)
    output = opts.output or os.path.join(ROOT, "benchmarks", "results", "on_policy_vllm_gpu.md")
    if not opts.smoke or opts.output:
        with open(output, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
