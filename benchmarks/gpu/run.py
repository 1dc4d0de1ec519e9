"""GPU benchmark of hf_distill against its anchors: the loss alone, the loss's chunk size, then whole training steps.

    pip install -e ".[bench]" && python benchmarks/gpu/run.py   # one CUDA GPU, bf16: results/gpu_<device>.md
    python benchmarks/gpu/run.py --smoke    # tiny sizes on CPU (float32), seconds: the test suite runs this

`[bench]` brings TRL and Liger-Kernel. Sized to finish in under 8 minutes on one H100/H200-class GPU: every case is
timed, each case's time is estimated from the one before it (the same method at a smaller size, or the same run at a
smaller batch), and a case that would end past `--budget_s` (default 400 s after the start) is skipped and its row
says so. Without CUDA (and without `--smoke`) it stops at once.

1. `loss`: forward + backward of the loss alone, hidden 4096, V in {32000, 128256, 151936}, tokens in {4096, 16384},
   the generalised JSD (beta 0.5, temperature 1) alone, bf16 inputs: dense (full logits,
   `hf_distill.losses.distillation_loss`), hf_distill fused (`linear_distillation_loss`, chunk `LOSS_CHUNK_SIZE`),
   the same with `torch.compile` of its chunk function (`hf_distill.losses.fused._chunk`), TRL 1.16's
   `_chunked_divergence_loss`, and Liger's `LigerFusedLinearJSDLoss` when `liger_kernel` imports. Time: CUDA events,
   median of 3 after a warm-up; memory: peak `torch.cuda.max_memory_allocated` above the inputs.
2. `chunk`: the fused loss at chunk sizes 128 to 4096 on the largest case (16384 tokens, V 151936) and on 4096 tokens
   at V 32000: the measurement behind `LOSS_CHUNK_SIZE` in bf16 (issue 18, item 2).
3. `step`: whole optimizer steps, student from the Qwen2.5-0.5B config and teacher from the Qwen2.5-7B config
   (random weights built on the GPU from the configs in `qwen2.5.json`: nothing is downloaded; the teacher's
   vocabulary is the student's 151936 so that TRL accepts the pair), sequence 2048, batch 4 and 16: a bare loop of
   the necessary work (backbones, `linear_distillation_loss`, backward, clipping, the same AdamW), hf_distill fused
   and dense with the online teacher, fused from a teacher cache (top-64, `renormalized`; random cached values, as
   timing needs no real ones), plain fine-tuning (`alpha: 1.0`), and TRL's `GKDTrainer` (`lmbda=0`). Tokens/s from
   the median step; peak memory above the teacher's weights, which stay on the GPU throughout.

Prints one Markdown table and writes it to `benchmarks/results/gpu_<device>.md` (`--output` to change).
"""

import argparse
import functools
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import traceback

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKENIZER = os.path.join(ROOT, "recipes", "demo", "tokenizer")  # only its padding id is read
BETA, TEMPERATURE, TOP_K = 0.5, 1.0, 64
MAX_GRAD_NORM = 1.0
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "qwen2.5.json")) as f:
    # The published configs' architecture fields (Qwen/Qwen2.5-0.5B and Qwen/Qwen2.5-7B, config.json).
    CONFIGS = json.load(f)
QWEN_0_5B, QWEN_7B = CONFIGS["Qwen2.5-0.5B"], CONFIGS["Qwen2.5-7B"]
TINY_STUDENT = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
    vocab_size=1024, tie_word_embeddings=True, max_position_embeddings=256,
)  # fmt: skip
TINY_TEACHER = {**TINY_STUDENT, "hidden_size": 64, "num_hidden_layers": 2, "tie_word_embeddings": False}

BARE, FUSED, DENSE, CACHE = "bare loop", "hf_distill fused", "hf_distill dense", "hf_distill fused, teacher cache"
FINETUNE, TRL_GKD = "plain fine-tuning (alpha 1.0)", "TRL GKDTrainer (lmbda=0)"
COLUMNS = (
    "| part | case | method | loss value | time (ms) | tokens/s | peak MiB | memory / ref | time / ref | note |",
    "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
)


class Budget:
    """The run's deadline, and each case's estimated time from the last measured case of the same kind."""

    def __init__(self, seconds: float):
        self.start = time.perf_counter()
        self.deadline = self.start + seconds
        self.last: dict[str, tuple[float, float, float]] = {}  # kind -> (fixed s, size-bound s, size) of its last case

    def skip_reason(self, kind: str, size: float, first_guess: float) -> str | None:
        """Why a case of `kind` and `size` does not fit: its estimate would end past the deadline. The estimate is the
        last case of its kind, its size-bound seconds scaled linearly in size plus its fixed ones (a compilation,
        building the models), else `first_guess` seconds."""
        left = self.deadline - time.perf_counter()
        fixed, scaled, last_size = self.last.get(kind, (first_guess, 0.0, size))
        estimate = fixed + scaled * size / last_size
        if estimate > left or left <= 0:
            return f"skipped: time budget (estimated {estimate:.0f} s, {max(left, 0):.0f} s left)"
        return None

    def record(self, kind: str, size: float, seconds: float, scaled: float) -> None:
        """A case of `kind` and `size` took `seconds`, of which `scaled` grow with the size (the timed work)."""
        self.last[kind] = (seconds - scaled, scaled, size)


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


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def failure(err: Exception, smoke: bool) -> str:
    """A failed case is a result (out of memory on the dense path, say), printed in its row; in full under --smoke."""
    if smoke:
        traceback.print_exc()
    return "failed: " + f"{type(err).__name__}: {err}".splitlines()[0][:100].replace("|", "/")


def case_rows(part: str, case: str, tokens: int, results: dict, reference: str) -> list[str]:
    """The table rows of one case: `results` maps each method to (loss value or None, seconds, peak MiB or None), or to
    the note that says why it has none; ratios divide by the `reference` method's."""
    ref = results.get(reference)
    ref = ref if isinstance(ref, tuple) else None
    rows = []
    for method, result in results.items():
        if isinstance(result, str):
            rows.append(f"| {part} | {case} | {method} | - | - | - | - | - | - | {result} |")
            continue
        value, seconds, peak = result
        cells = [
            "-" if value is None else f"{value:.6g}",
            f"{1000 * seconds:.1f}",
            f"{tokens / seconds:,.0f}",
            "-" if peak is None else f"{peak:,.0f}",
            f"{peak / ref[2]:.2f}" if ref and peak is not None and ref[2] else "-",
            f"{seconds / ref[1]:.2f}" if ref else "-",
        ]
        rows.append(f"| {part} | {case} | {method} | {' | '.join(cells)} |  |")
    return rows


# ---- loss only ----


def fused_loss(chunk_size: int):
    from hf_distill.losses import linear_distillation_loss

    def fused(sh, sw, th, tw, labels):
        return linear_distillation_loss(
            sh, sw, th, tw, labels, alpha=0.0, loss_type="jsd", beta=BETA, temperature=TEMPERATURE,
            chunk_size=chunk_size,
        )  # fmt: skip

    return fused


def loss_methods(opts):
    """name -> f(s_hidden, s_weight, t_hidden, t_weight, labels) returning a scalar (sum over valid tokens), or the
    reason it cannot run here."""
    from hf_distill.losses import LOSS_CHUNK_SIZE, distillation_loss
    from hf_distill.losses import fused as hf_fused

    def dense(sh, sw, th, tw, labels):
        return distillation_loss(sh @ sw.T, th @ tw.T, labels, loss_type="jsd", beta=BETA, temperature=TEMPERATURE)

    fused = fused_loss(LOSS_CHUNK_SIZE)
    eager_chunk = hf_fused._chunk
    # --smoke checks the swap, not the compiler: the eager backend runs the same graph capture without a C++ build.
    compiled_chunk = torch.compile(eager_chunk, dynamic=True, backend="eager" if opts.smoke else "inductor")

    def fused_compiled(*args):
        hf_fused._chunk = compiled_chunk
        try:
            return fused(*args)
        finally:
            hf_fused._chunk = eager_chunk

    methods = {
        "dense": dense,
        f"hf_distill fused (chunk {LOSS_CHUNK_SIZE})": fused,
        f"hf_distill fused (chunk {LOSS_CHUNK_SIZE}) + torch.compile(_chunk)": fused_compiled,
    }
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

        # Its own chunk size (1024) and torch.compile of its chunk, as shipped; --smoke runs it eagerly.
        liger_loss = LigerFusedLinearJSDLoss(
            weight_hard_loss=0.0, weight_soft_loss=1.0, beta=BETA, ignore_index=-100, temperature=TEMPERATURE,
            compiled=not opts.smoke,
        )  # fmt: skip

        def liger(sh, sw, th, tw, labels):
            # Liger returns the mean over valid tokens; the others the sum.
            return liger_loss(sh, sw, th, tw, labels) * labels.ne(-100).sum()

        methods["Liger LigerFusedLinearJSDLoss"] = liger
    except ImportError as err:
        methods["Liger LigerFusedLinearJSDLoss"] = f"skipped: {err}"
    return methods


def loss_inputs(tokens: int, vocab: int, hidden: int, device, dtype) -> tuple:
    generator = torch.Generator(device="cpu").manual_seed(0)
    sh = (torch.randn(tokens, hidden, generator=generator) * 0.5).to(device, dtype).requires_grad_()
    th = (torch.randn(tokens, hidden, generator=generator) * 0.5).to(device, dtype)
    sw = (torch.randn(vocab, hidden, generator=generator) * 0.02).to(device, dtype).requires_grad_()
    tw = (torch.randn(vocab, hidden, generator=generator) * 0.02).to(device, dtype)
    labels = torch.randint(0, vocab, (tokens,), generator=generator)
    labels[torch.rand(tokens, generator=generator) < 0.1] = -100
    return sh, sw, th, tw, labels.to(device)


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


def loss_cases(part, cases, methods, reference, opts, device, dtype, clock, budget) -> list[str]:
    """Rows of each (tokens, vocab) case by each method; `reference` names the method the ratios divide by."""
    rows = []
    for tokens, vocab in cases:
        inputs = loss_inputs(tokens, vocab, opts.hidden, device, dtype)
        results = {}
        for name, method in methods.items():
            # First cases: a few seconds at these sizes; a compilation, a minute or more.
            guess = opts.first_guess_s * (10 if "compile" in name else 1)
            results[name] = (
                method if isinstance(method, str) else budget.skip_reason(part + name, tokens * vocab, guess)
            )
            if results[name]:
                continue
            began = time.perf_counter()
            try:
                seconds, peak, value = measure_loss(method, inputs, clock, opts.repeats)
            except Exception as err:
                results[name] = failure(err, opts.smoke)
                free_memory(device)
                continue
            # The warm-up call holds any compilation; the others scale with the size.
            budget.record(part + name, tokens * vocab, time.perf_counter() - began, seconds * (opts.repeats + 1))
            results[name] = (value, seconds, peak)
        rows += case_rows(part, f"{tokens} tokens x V {vocab}", tokens, results, reference)
        del inputs
        free_memory(device)
    return rows


def loss_part(opts, device, dtype, clock, budget) -> list[str]:
    cases = [(tokens, vocab) for tokens in opts.loss_tokens for vocab in opts.loss_vocabs]
    return loss_cases("loss", cases, loss_methods(opts), "dense", opts, device, dtype, clock, budget)


def chunk_part(opts, device, dtype, clock, budget) -> list[str]:
    from hf_distill.losses import LOSS_CHUNK_SIZE

    methods = {f"hf_distill fused, chunk {size}": fused_loss(size) for size in opts.chunk_sizes}
    reference = f"hf_distill fused, chunk {LOSS_CHUNK_SIZE}"
    return loss_cases("chunk", opts.chunk_cases, methods, reference, opts, device, dtype, clock, budget)


# ---- training steps ----


def build(config: dict, device, dtype, seed: int = 0):
    """A model with random weights, the same for the same `seed`."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(seed)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(Qwen2Config(**config), dtype=dtype)


def step_dataset(opts, vocab: int, batch_size: int, cached: bool):
    """Random token rows, the first eighth of each a prompt; with `cached`, random top-k teacher columns in the cache's
    layout (`hf_distill.teachers.cache_builder`: per target token, K ids, K log-probabilities and the tail's)."""
    import datasets
    import numpy as np

    rows = (opts.warmup_steps + opts.timed_steps) * batch_size
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (rows, opts.seq_len), generator=generator)
    labels = ids.clone()
    labels[:, : opts.seq_len // 8] = -100
    columns = {"input_ids": ids.tolist(), "labels": labels.tolist()}
    if not cached:
        return datasets.Dataset.from_dict(columns)
    targets = opts.seq_len - opts.seq_len // 8  # labels[1:] != -100
    rng = np.random.default_rng(0)
    logprobs = np.sort(np.log(rng.dirichlet(np.ones(TOP_K + 1), size=(rows, targets))), axis=-1)[..., ::-1]
    columns["teacher_topk_ids"] = list(rng.integers(0, vocab, (rows, targets * TOP_K), dtype=np.int32))
    columns["teacher_topk_logprobs"] = list(logprobs[..., :TOP_K].reshape(rows, -1).astype(np.float32))
    columns["teacher_tail_logprob"] = list(logprobs[..., TOP_K].astype(np.float32))
    cache_columns = ["teacher_topk_ids", "teacher_topk_logprobs", "teacher_tail_logprob"]
    return datasets.Dataset.from_dict(columns).with_format("numpy", columns=cache_columns, output_all_columns=True)


def common_args(opts, device, dtype, batch_size: int, output_dir: str) -> dict:
    steps = opts.warmup_steps + opts.timed_steps
    return dict(
        output_dir=output_dir, use_cpu=device.type != "cuda", per_device_train_batch_size=batch_size,
        max_steps=steps, learning_rate=1e-5, bf16=dtype == torch.bfloat16, gradient_checkpointing=False,
        max_grad_norm=MAX_GRAD_NORM, save_strategy="no", report_to=[], disable_tqdm=True, logging_steps=steps,
        temperature=TEMPERATURE, train_sampling_strategy="sequential",
    )  # fmt: skip


def bare_loop(opts, device, dtype, clock, student_config, teacher, batch_size, output_dir) -> tuple[list, float]:
    """The necessary work of an online distillation step, without a trainer: per-step seconds, and the mean loss."""
    from transformers import Trainer, TrainingArguments

    from hf_distill.data.datasets import DistillDataCollator
    from hf_distill.losses import linear_distillation_loss

    student = build(student_config, device, torch.float32, seed=1).train()
    args = {k: v for k, v in common_args(opts, device, dtype, batch_size, output_dir).items() if k != "temperature"}
    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(TrainingArguments(**args), student)
    optimizer = optimizer_cls(student.parameters(), **optimizer_kwargs)
    dataset = step_dataset(opts, student_config["vocab_size"], batch_size, cached=False)
    collate = DistillDataCollator(tokenizer())
    times, losses = [], []
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, start + batch_size)])
        batch = {k: v.to(device) for k, v in batch.items()}
        began = time.perf_counter()
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        targets = batch["labels"][:, 1:]
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            hidden = student.model(**inputs).last_hidden_state[:, :-1]
            with torch.no_grad():
                teacher_hidden = teacher.model(**inputs).last_hidden_state[:, :-1]
            loss = linear_distillation_loss(
                hidden, student.lm_head.weight, teacher_hidden, teacher.lm_head.weight, targets,
                alpha=0.0, loss_type="jsd", beta=BETA, temperature=TEMPERATURE,
            ) / targets.ne(-100).sum().clamp(min=1)  # fmt: skip
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        clock.sync()
        times.append(time.perf_counter() - began)
        losses.append(loss.item())
    return times, statistics.mean(losses)


def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER)


def trainer_run(
    name, opts, device, dtype, clock, student_config, teacher, batch_size, output_dir
) -> tuple[list, float]:
    """Per-step seconds of `name`'s trainer (from Trainer's step-begin to step-end event), and its mean training
    loss."""
    from transformers import PrinterCallback, TrainerCallback

    from hf_distill import DistillConfig, DistillTrainer
    from hf_distill.data.datasets import DistillDataCollator

    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self.last = [], 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            clock.sync()
            self.last = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            clock.sync()
            self.times.append(time.perf_counter() - self.last)

    common = common_args(opts, device, dtype, batch_size, output_dir)
    dataset = step_dataset(opts, student_config["vocab_size"], batch_size, cached=name == CACHE)
    student = build(student_config, device, torch.float32, seed=1)
    kwargs = dict(train_dataset=dataset, data_collator=DistillDataCollator(tokenizer()), processing_class=tokenizer())
    if name == TRL_GKD:
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        args = GKDConfig(**common, lmbda=0.0, beta=BETA, max_length=opts.seq_len)
        trainer = GKDTrainer(model=student, teacher_model=teacher, args=args, **kwargs)
    else:
        overrides = {
            FUSED: dict(alpha=0.0),
            DENSE: dict(alpha=0.0, loss_chunk_size=0),
            CACHE: dict(alpha=0.0, teacher_cache_dir=output_dir),  # the batches carry the cached columns
            FINETUNE: dict(alpha=1.0),
        }[name]
        args = DistillConfig(**common, loss_type="jsd", beta=BETA, metrics_csv=False, track_samples=[], **overrides)
        live = overrides["alpha"] < 1.0 and name != CACHE
        trainer = DistillTrainer(model=student, teacher_model=teacher if live else None, args=args, **kwargs)
    timer = Timer()
    trainer.add_callback(timer)
    trainer.remove_callback(PrinterCallback)  # disable_tqdm would print every log
    return timer.times, trainer.train().training_loss


def step_part(opts, device, dtype, clock, budget) -> list[str]:
    import datasets
    from transformers.utils import logging

    logging.set_verbosity_error()
    datasets.disable_progress_bars()
    student_config, teacher_config = (TINY_STUDENT, TINY_TEACHER) if opts.smoke else (QWEN_0_5B, QWEN_7B)
    teacher = build(teacher_config, device, dtype).eval().requires_grad_(False)
    teacher_gib = sum(p.numel() * p.element_size() for p in teacher.parameters()) / 2**30
    student_billions = sum(p.numel() for p in build(student_config, "meta", dtype).parameters()) / 1e9
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for batch_size in opts.batch_sizes:
            tokens, results = batch_size * opts.seq_len, {}
            for index, name in enumerate((BARE, FUSED, DENSE, CACHE, FINETUNE, TRL_GKD)):
                results[name] = budget.skip_reason(f"step:{name}", batch_size, opts.first_guess_s * 6)
                if results[name]:
                    continue
                free_memory(device)
                base = torch.cuda.memory_allocated() if device.type == "cuda" else 0
                began = time.perf_counter()
                output_dir = os.path.join(tmp, f"{batch_size}-{index}")
                run = bare_loop if name == BARE else functools.partial(trainer_run, name)
                try:
                    times, loss = run(opts, device, dtype, clock, student_config, teacher, batch_size, output_dir)
                except Exception as err:
                    results[name] = failure(err, opts.smoke)
                    continue
                finally:
                    gc.collect()  # the run's models and optimizer; the peak stays readable until free_memory
                # Building the models and the trainer does not grow with the batch; the steps do.
                budget.record(f"step:{name}", batch_size, time.perf_counter() - began, sum(times))
                peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if device.type == "cuda" else None
                results[name] = (loss, statistics.median(times[opts.warmup_steps :]), peak)
            rows += case_rows("step", f"batch {batch_size} x {opts.seq_len}", tokens, results, BARE)
    models = "tiny Qwen2 configs" if opts.smoke else "the Qwen2.5-0.5B and Qwen2.5-7B configs"
    header = (
        f"`step`: student and teacher from {models} ({student_billions:.2f}B parameters; the teacher's "
        f"{teacher_gib:.1f} GiB of weights stay on the device throughout and are not in the peaks), "
        f"{opts.timed_steps} timed steps after {opts.warmup_steps}; ref = the bare loop."
    )
    return header, rows


# ---- the run ----


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU, float32 (seconds)")
    parser.add_argument("--budget_s", type=float, default=400.0, help="no case may end after this (default: 400)")
    parser.add_argument("--output", default=None, help="default: benchmarks/results/gpu_<device>.md")
    # The budget's guess for the first case of each kind, before any was timed (x10 for a compilation, x6 for a
    # training run, which builds its models); measured cases replace it.
    parser.add_argument("--first_guess_s", type=float, default=5.0, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.smoke:
        opts.loss_tokens, opts.loss_vocabs, opts.hidden, opts.repeats = [64], [512], 32, 1
        opts.chunk_cases, opts.chunk_sizes = [(64, 512)], [16, 256]
        opts.seq_len, opts.batch_sizes, opts.warmup_steps, opts.timed_steps = 16, [2], 1, 2
    else:
        opts.loss_tokens, opts.loss_vocabs, opts.hidden, opts.repeats = [4096, 16384], [32000, 128256, 151936], 4096, 3
        opts.chunk_cases, opts.chunk_sizes = [(4096, 32000), (16384, 151936)], [128, 256, 512, 1024, 2048, 4096]
        opts.seq_len, opts.batch_sizes, opts.warmup_steps, opts.timed_steps = 2048, [4, 16], 2, 5
    return opts


def main(argv=None) -> None:
    opts = parse_args(argv)
    if not opts.smoke and not torch.cuda.is_available():
        sys.exit(
            "error: benchmarks/gpu/run.py needs a CUDA GPU (torch.cuda.is_available() is False); "
            "--smoke runs it on CPU"
        )
    budget = Budget(opts.budget_s)
    device = torch.device("cpu" if opts.smoke else "cuda")
    dtype = torch.float32 if opts.smoke else torch.bfloat16
    clock = Clock(device)
    name = "cpu-smoke" if opts.smoke else torch.cuda.get_device_name().replace(" ", "-")
    rows, timings = [], []
    for part, run in (
        ("loss", lambda: loss_part(opts, device, dtype, clock, budget)),
        ("chunk", lambda: chunk_part(opts, device, dtype, clock, budget)),
        ("step", lambda: step_part(opts, device, dtype, clock, budget)),
    ):
        began = time.perf_counter()
        result = run()
        if part == "step":
            step_header, result = result
        rows += result
        timings.append(f"{part} {time.perf_counter() - began:.0f} s")
    lines = [
        f"# benchmarks/gpu/run.py on {name} ({'float32' if opts.smoke else 'bf16'}, torch {torch.__version__})",
        "",
        f"`loss` and `chunk`: forward + backward of the generalised JSD (beta 0.5) alone, hidden {opts.hidden}, about "
        "10% of labels masked; ref = dense (`loss`) or the default chunk (`chunk`); peak MiB above the inputs. "
        f"{step_header} Time: {', '.join(timings)}; total {time.perf_counter() - budget.start:.0f} s of the budget's "
        f"{opts.budget_s:.0f} s (a case that would have ended past it is marked skipped).",
        "",
        *COLUMNS,
        *rows,
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    output = opts.output or os.path.join(ROOT, "benchmarks", "results", f"gpu_{name}.md")
    if not opts.smoke or opts.output:
        with open(output, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
