"""GPU benchmark of hf_distill against its anchors: the loss alone, then a whole training step. One command:

    pip install -e ".[bench]"          # TRL; add `pip install liger-kernel` for Liger's fused JSD
    python benchmarks/gpu/run.py        # on one CUDA GPU, bf16; writes benchmarks/results/gpu_<device>.md
    python benchmarks/gpu/run.py --smoke    # tiny sizes on CPU (float32), seconds: the test suite runs this

Sized to finish in under 8 minutes on one H100/H200-class GPU: every part is timed, and a part whose estimated time
would take the run past `--budget_s` (default 420 s) is skipped and listed as skipped. Without CUDA (and without
`--smoke`) it stops at once.

1. Loss only, forward + backward, hidden 4096, V in {32000, 128256, 151936}, tokens in {4096, 16384}, the generalised
   JSD (beta 0.5, temperature 1) alone: dense (full logits, `hf_distill.losses.distillation_loss`), hf_distill fused
   (`linear_distillation_loss`, `loss_chunk_size` 256), the same with `torch.compile` of its chunk function
   (`hf_distill.losses.fused._chunk`), TRL 1.16's `_chunked_divergence_loss`, and Liger's `LigerFusedLinearJSDLoss`
   when `liger_kernel` imports. Time: CUDA events, median of 3 after a warm-up; memory: peak
   `torch.cuda.max_memory_allocated` above the inputs.
2. A whole training step, student from the Qwen2.5-0.5B config and teacher from the Qwen2.5-7B config (random
   weights, built on the GPU from the configs written below: nothing is downloaded; the teacher's vocabulary is set
   to the student's 151936 so that TRL accepts the pair), sequence 2048, `--batch_size` sequences: hf_distill dense
   (`loss_chunk_size: 0`) and fused, plain fine-tuning (`alpha: 1.0`, the limit a teacher cache approaches), and
   TRL's `GKDTrainer` with `lmbda=0`. Tokens/s from the median step, peak memory.

Prints one Markdown table per part and writes both to `benchmarks/results/gpu_<device>.md` (`--output` to change).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
import traceback

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKENIZER = os.path.join(ROOT, "recipes", "demo", "tokenizer")  # only its padding id is read
BETA, TEMPERATURE = 0.5, 1.0
FINETUNE = "plain fine-tuning (alpha 1.0; the bound a teacher cache approaches)"

# The published configs' architecture fields (Qwen/Qwen2.5-0.5B and Qwen/Qwen2.5-7B, config.json).
QWEN_0_5B = dict(
    hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
    vocab_size=151936, tie_word_embeddings=True, rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=32768,
)  # fmt: skip
QWEN_7B = dict(
    hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
    vocab_size=151936, tie_word_embeddings=False, rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=32768,
)  # fmt: skip
TINY_STUDENT = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
    vocab_size=1024, tie_word_embeddings=True, max_position_embeddings=256,
)  # fmt: skip
TINY_TEACHER = {**TINY_STUDENT, "hidden_size": 64, "num_hidden_layers": 2, "tie_word_embeddings": False}


class Clock:
    """Wall time of a callable (CUDA events on a GPU) and the peak memory it allocated above what was there."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def measure(self, fn, repeats: int) -> tuple[float, float | None]:
        """Median seconds of `repeats` calls after one warm-up, and peak MiB above the memory before them."""
        fn()
        self.sync()
        base = torch.cuda.memory_allocated() if self.cuda else 0
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(repeats):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1000)
            else:
                begin = time.perf_counter()
                fn()
                times.append(time.perf_counter() - begin)
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if self.cuda else None
        return statistics.median(times), peak


def loss_methods(no_compile: bool):
    """name -> f(s_hidden, s_weight, t_hidden, t_weight, labels) returning a scalar (sum over valid tokens), or the
    reason it cannot run here."""
    from hf_distill.losses import distillation_loss, linear_distillation_loss
    from hf_distill.losses import fused as hf_fused

    def dense(sh, sw, th, tw, labels):
        return distillation_loss(sh @ sw.T, th @ tw.T, labels, loss_type="jsd", beta=BETA, temperature=TEMPERATURE)

    def fused(sh, sw, th, tw, labels):
        return linear_distillation_loss(
            sh, sw, th, tw, labels, alpha=0.0, loss_type="jsd", beta=BETA, temperature=TEMPERATURE
        )

    eager_chunk = hf_fused._chunk
    compiled_chunk = torch.compile(eager_chunk, dynamic=True)

    def fused_compiled(*args):
        hf_fused._chunk = compiled_chunk
        try:
            return fused(*args)
        finally:
            hf_fused._chunk = eager_chunk

    methods = {"dense": dense, "hf_distill fused": fused, "hf_distill fused + torch.compile(_chunk)": fused_compiled}
    if no_compile:
        methods["hf_distill fused + torch.compile(_chunk)"] = "skipped: --no_compile"
    try:
        from trl.trainer.distillation_trainer import _chunked_divergence_loss

        def trl(sh, sw, th, tw, labels):
            mask = labels.ne(-100)
            loss, _, _ = _chunked_divergence_loss(
                sh[None], th[None], sw, tw, mask[None].long(), BETA, num_items_in_batch=1, temperature=TEMPERATURE
            )
            return loss

        methods["TRL _chunked_divergence_loss"] = trl
    except ImportError as err:
        methods["TRL _chunked_divergence_loss"] = f"skipped: {err}"
    try:
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

        liger_loss = LigerFusedLinearJSDLoss(
            weight_hard_loss=0.0, weight_soft_loss=1.0, beta=BETA, ignore_index=-100, temperature=TEMPERATURE
        )

        def liger(sh, sw, th, tw, labels):
            return liger_loss(sh, sw, th, tw, labels) * labels.ne(-100).sum()

        methods["Liger LigerFusedLinearJSDLoss"] = liger
    except ImportError as err:
        methods["Liger LigerFusedLinearJSDLoss"] = f"skipped: {err}"
    return methods


def measure_loss(method, inputs: tuple, clock: Clock, repeats: int) -> tuple[float, float | None, float]:
    """Seconds and peak MiB of forward + backward of `method` on `inputs`, and the loss value."""
    s_hidden, s_weight = inputs[0], inputs[1]
    value = []

    def step():
        s_hidden.grad = s_weight.grad = None
        loss = method(*inputs)
        loss.backward()
        value[:] = [loss.item()]

    return *clock.measure(step, repeats), value[0]


def loss_part(opts, device, dtype, clock, deadline) -> list[str]:
    methods = loss_methods(opts.no_compile)
    rows = ["| tokens | vocab | method | value | time (ms) | peak MiB above inputs | memory / dense | time / dense |"]
    rows.append("|---:|---:|---|---:|---:|---:|---:|---:|")
    generator = torch.Generator(device="cpu").manual_seed(0)
    for tokens in opts.loss_tokens:
        for vocab in opts.loss_vocabs:
            sh = (torch.randn(tokens, opts.hidden, generator=generator) * 0.5).to(device, dtype).requires_grad_()
            th = (torch.randn(tokens, opts.hidden, generator=generator) * 0.5).to(device, dtype)
            sw = (torch.randn(vocab, opts.hidden, generator=generator) * 0.02).to(device, dtype).requires_grad_()
            tw = (torch.randn(vocab, opts.hidden, generator=generator) * 0.02).to(device, dtype)
            labels = torch.randint(0, vocab, (tokens,), generator=generator).to(device)
            labels[torch.rand(tokens, generator=generator).to(device) < 0.1] = -100
            reference = None
            for name, method in methods.items():
                if isinstance(method, str):
                    rows.append(f"| {tokens} | {vocab} | {name} | - | - | - | - | {method} |")
                    continue
                if time.perf_counter() > deadline:
                    rows.append(f"| {tokens} | {vocab} | {name} | - | - | - | - | skipped: time budget |")
                    continue
                try:
                    seconds, peak, value = measure_loss(method, (sh, sw, th, tw, labels), clock, opts.repeats)
                except Exception as err:  # a method that fails here is a finding to print, not the end of the run
                    message = f"{type(err).__name__}: {err}".splitlines()[0][:100].replace("|", "/")
                    rows.append(f"| {tokens} | {vocab} | {name} | - | - | - | - | failed: {message} |")
                    if opts.smoke:
                        traceback.print_exc()
                    continue
                if name == "dense":
                    reference = (seconds, peak)
                mem = "-" if peak is None else f"{peak:,.0f}"
                mem_ratio = "-" if peak is None or reference is None else f"{peak / reference[1]:.2f}"
                time_ratio = "-" if reference is None else f"{seconds / reference[0]:.2f}"
                rows.append(
                    f"| {tokens} | {vocab} | {name} | {value:.6g} | {1000 * seconds:.1f} | {mem} | {mem_ratio} | "
                    f"{time_ratio} |"
                )
            del sh, th, sw, tw, labels
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def build(config: dict, device, dtype):
    from transformers import AutoModelForCausalLM, Qwen2Config

    with torch.device(device):
        return AutoModelForCausalLM.from_config(Qwen2Config(**config), dtype=dtype)


def step_part(opts, device, dtype, clock, deadline) -> list[str]:
    import datasets
    from transformers import AutoTokenizer, TrainerCallback
    from transformers.utils import logging

    from hf_distill import DistillConfig, DistillTrainer
    from hf_distill.data import DistillDataCollator

    logging.set_verbosity_error()
    datasets.disable_progress_bars()
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    student_config, teacher_config = (TINY_STUDENT, TINY_TEACHER) if opts.smoke else (QWEN_0_5B, QWEN_7B)
    torch.manual_seed(0)
    teacher = build(teacher_config, device, dtype).eval().requires_grad_(False)
    steps = opts.warmup_steps + opts.timed_steps
    vocab = student_config["vocab_size"]
    ids = torch.randint(3, vocab, (steps * opts.batch_size, opts.seq_len), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, : opts.seq_len // 8] = -100
    dataset = datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist()})

    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self.last = [], 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            clock.sync()
            self.last = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            clock.sync()
            self.times.append(time.perf_counter() - self.last)

    def common(output_dir):
        return dict(
            output_dir=output_dir, use_cpu=device.type != "cuda", per_device_train_batch_size=opts.batch_size,
            max_steps=steps, learning_rate=1e-5, bf16=dtype == torch.bfloat16, gradient_checkpointing=False,
            save_strategy="no", report_to=[], disable_tqdm=True, logging_steps=steps, temperature=TEMPERATURE,
            train_sampling_strategy="sequential",
        )  # fmt: skip

    def hf_distill_run(output_dir, **overrides):
        args = DistillConfig(
            **common(output_dir), loss_type="jsd", beta=BETA, metrics_csv=False, track_samples=[], **overrides
        )
        return DistillTrainer(
            model=build(student_config, device, torch.float32), teacher_model=teacher, args=args,
            train_dataset=dataset, data_collator=DistillDataCollator(tokenizer), processing_class=tokenizer,
        )  # fmt: skip

    def trl_run(output_dir):
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        args = GKDConfig(**common(output_dir), lmbda=0.0, beta=BETA, max_length=opts.seq_len)
        return GKDTrainer(
            model=build(student_config, device, torch.float32), teacher_model=teacher, args=args,
            train_dataset=dataset, data_collator=DistillDataCollator(tokenizer), processing_class=tokenizer,
        )  # fmt: skip

    runs = {
        "hf_distill fused (loss_chunk_size 256), online teacher": lambda d: hf_distill_run(d, alpha=0.0),
        "hf_distill dense (loss_chunk_size 0), online teacher": lambda d: hf_distill_run(
            d, alpha=0.0, loss_chunk_size=0
        ),
        FINETUNE: lambda d: hf_distill_run(d, alpha=1.0),
        "TRL GKDTrainer (lmbda=0), dense": trl_run,
    }  # fmt: skip
    tokens = opts.batch_size * opts.seq_len
    results = {}  # name -> (median seconds, peak GiB) or the reason there is none
    with tempfile.TemporaryDirectory() as tmp:
        for index, (name, make) in enumerate(runs.items()):
            if time.perf_counter() > deadline:
                results[name] = "skipped: time budget"
                continue
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            timer = Timer()
            try:
                trainer = make(os.path.join(tmp, str(index)))
                trainer.add_callback(timer)
                trainer.train()
            except Exception as err:  # e.g. out of memory on the dense path: a result, not the end of the run
                results[name] = "failed: " + f"{type(err).__name__}: {err}".splitlines()[0][:100].replace("|", "/")
                if opts.smoke:
                    traceback.print_exc()
                continue
            finally:
                trainer = None
            peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
            results[name] = (statistics.median(timer.times[opts.warmup_steps :]), peak)
    finetune = results[FINETUNE][0] if isinstance(results[FINETUNE], tuple) else None
    rows = ["| run | median step (ms) | tokens/s | peak GiB | ratio to fine-tuning |", "|---|---:|---:|---:|---:|"]
    for name, result in results.items():
        if isinstance(result, str):
            rows.append(f"| {name} | - | - | - | {result} |")
            continue
        seconds, peak = result
        ratio = "-" if finetune is None else f"{seconds / finetune:.2f}"
        memory = "-" if peak is None else f"{peak:.1f}"
        rows.append(f"| {name} | {1000 * seconds:.1f} | {tokens / seconds:,.0f} | {memory} | {ratio} |")
    return rows


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU, float32 (seconds)")
    parser.add_argument("--budget_s", type=float, default=420.0, help="skip parts that start after this (420)")
    parser.add_argument("--batch_size", type=int, default=4, help="sequences per training step (default: 4)")
    parser.add_argument("--no_compile", action="store_true", help="leave out the torch.compile case (slow on CPU)")
    parser.add_argument("--output", default=None, help="default: benchmarks/results/gpu_<device>.md")
    opts = parser.parse_args(argv)
    if opts.smoke:
        opts.loss_tokens, opts.loss_vocabs, opts.hidden, opts.repeats = [64], [512], 32, 1
        opts.seq_len, opts.batch_size, opts.warmup_steps, opts.timed_steps = 16, 2, 1, 2
    else:
        opts.loss_tokens, opts.loss_vocabs, opts.hidden, opts.repeats = [4096, 16384], [32000, 128256, 151936], 4096, 3
        opts.seq_len, opts.warmup_steps, opts.timed_steps = 2048, 2, 5
    return opts


def main(argv=None) -> None:
    opts = parse_args(argv)
    if not opts.smoke and not torch.cuda.is_available():
        sys.exit(
            "error: benchmarks/gpu/run.py needs a CUDA GPU (torch.cuda.is_available() is False); "
            "--smoke runs it on CPU"
        )
    start = time.perf_counter()
    deadline = start + opts.budget_s
    device = torch.device("cpu" if opts.smoke else "cuda")
    dtype = torch.float32 if opts.smoke else torch.bfloat16
    clock = Clock(device)
    name = "cpu-smoke" if opts.smoke else torch.cuda.get_device_name().replace(" ", "-")
    header = f"# benchmarks/gpu/run.py on {name} ({'float32' if opts.smoke else 'bf16'}, torch {torch.__version__})"
    sections = [header, "", "## Loss only, forward + backward", ""]
    sections += loss_part(opts, device, dtype, clock, deadline)
    loss_seconds = time.perf_counter() - start
    sections += ["", f"(loss part: {loss_seconds:.0f} s)", "", "## Training step", ""]
    sections += [
        f"sequence {opts.seq_len}, batch {opts.batch_size}, {opts.timed_steps} timed steps after {opts.warmup_steps}",
        "",
    ]
    sections += step_part(opts, device, dtype, clock, deadline)
    sections += ["", f"total: {time.perf_counter() - start:.0f} s"]
    text = "\n".join(sections) + "\n"
    print(text)
    output = opts.output or os.path.join(ROOT, "benchmarks", "results", f"gpu_{name}.md")
    if not opts.smoke or opts.output:
        with open(output, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
