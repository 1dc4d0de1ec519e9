"""Peak memory and time of one forward + backward of the distillation loss: dense logits vs chunked.

For each (tokens, vocab) case this measures, side by side:

- `dense`: both models' logits materialised with a matmul, then `cross_entropy_loss` + `distillation_loss`;
- `chunked`: `hf_distill.losses.linear_distillation_loss`, which never builds the full logits;
- `trl`: TRL's chunked divergence (`trl.trainer.distillation_trainer._chunked_divergence_loss`) when `trl` is
  importable. It computes the divergence only (no cross-entropy term), so it does strictly less work than the other
  two.

Every measurement runs in a fresh spawned process so that no allocator cache carries over from one case to the
next. On CPU the peak is the growth of the resident set (VmHWM, reset through /proc/self/clear_refs, or ru_maxrss
where that is unavailable) over the resident set measured once the inputs exist; on CUDA it is
`torch.cuda.max_memory_allocated` over the allocation measured at the same point.

    python benchmarks/loss_memory.py            # the three cases of the issue
    python benchmarks/loss_memory.py --quick    # small cases, for a smoke test
"""

import argparse
import multiprocessing as mp
import os
import platform
import resource
import sys
import time

HIDDEN = 1024
CASES = [(4096, 32000), (4096, 128256), (16384, 32000)]
QUICK_CASES = [(1024, 8000), (1024, 32000), (4096, 8000)]
METHODS = ("dense", "chunked", "trl")
LOSS_TYPE, ALPHA, TEMPERATURE, MASKED_FRACTION = "forward_kl", 0.5, 2.0, 0.1


def _can_reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    # ru_maxrss is in KiB on Linux and in bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return _peak_rss_bytes()


def _make_inputs(tokens, vocab, device, dtype, seed=0):
    import torch

    gen = torch.Generator().manual_seed(seed)
    # Scaled so that the logits have a spread of a few units, as a trained LM head's do.
    scale = HIDDEN**-0.5 * 3

    def randn(*shape, s=1.0):
        return (torch.randn(*shape, generator=gen) * s).to(device=device, dtype=dtype)

    student_hidden = randn(1, tokens, HIDDEN).requires_grad_()
    student_weight = randn(vocab, HIDDEN, s=scale).requires_grad_()
    teacher_hidden = randn(1, tokens, HIDDEN)
    teacher_weight = randn(vocab, HIDDEN, s=scale)
    labels = torch.randint(0, vocab, (1, tokens), generator=gen)
    labels[torch.rand(1, tokens, generator=gen) < MASKED_FRACTION] = -100
    return student_hidden, student_weight, teacher_hidden, teacher_weight, labels.to(device)


def _step(method, inputs, chunk_size):
    """One forward + backward; returns the loss value."""
    import torch

    from hf_distill.losses import cross_entropy_loss, distillation_loss, linear_distillation_loss

    student_hidden, student_weight, teacher_hidden, teacher_weight, labels = inputs
    if method == "dense":
        student_logits = student_hidden @ student_weight.T
        with torch.no_grad():
            teacher_logits = teacher_hidden @ teacher_weight.T
        ce = cross_entropy_loss(student_logits, labels)
        kd = distillation_loss(student_logits, teacher_logits, labels, loss_type=LOSS_TYPE, temperature=TEMPERATURE)
        loss = ALPHA * ce + (1 - ALPHA) * kd
    elif method == "chunked":
        loss = linear_distillation_loss(
            student_hidden,
            student_weight,
            teacher_hidden,
            teacher_weight,
            labels,
            alpha=ALPHA,
            loss_type=LOSS_TYPE,
            temperature=TEMPERATURE,
            chunk_size=chunk_size,
        )
    else:
        from trl.trainer.distillation_trainer import _chunked_divergence_loss

        # beta=0 is TRL's forward KL; it returns the mean over valid positions and has no T**2 factor.
        loss, _, _ = _chunked_divergence_loss(
            student_hidden,
            teacher_hidden,
            student_weight,
            teacher_weight,
            labels != -100,
            beta=0.0,
            temperature=TEMPERATURE,
        )
    loss.backward()
    student_hidden.grad = student_weight.grad = None
    return loss.item()


def _child(method, tokens, vocab, device, dtype_name, chunk_size, repeats, threads, queue):
    try:
        import torch

        if threads:
            torch.set_num_threads(threads)

        dtype = getattr(torch, dtype_name)
        cuda = device.startswith("cuda")
        # A tiny warm-up initialises thread pools and kernels lazily allocated on first use, outside the measurement.
        _step(method, _make_inputs(64, 256, device, dtype, seed=1), chunk_size)
        inputs = _make_inputs(tokens, vocab, device, dtype)
        n_valid = int((inputs[-1] != -100).sum())
        resettable = not cuda and _can_reset_peak_rss()
        times, cpu_times, peaks = [], [], []
        for _ in range(repeats):
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                baseline = torch.cuda.memory_allocated()
            else:
                if resettable:
                    _can_reset_peak_rss()
                baseline = _current_rss_bytes()
            start, cpu_start = time.perf_counter(), time.process_time()
            loss = _step(method, inputs, chunk_size)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
            peak = torch.cuda.max_memory_allocated() if cuda else _peak_rss_bytes()
            peaks.append(peak - baseline)
        queue.put({"time": min(times), "cpu": min(cpu_times), "peak": max(peaks), "loss": loss, "n_valid": n_valid})
    except Exception as e:
        # Reported in the table rather than aborting the other cases.
        queue.put({"error": f"{type(e).__name__}: {e}"})


def _measure(method, tokens, vocab, args):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(
        target=_child,
        args=(method, tokens, vocab, args.device, args.dtype, args.chunk_size, args.repeats, args.threads, queue),
    )
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        # SIGKILL from the kernel's out-of-memory killer is the usual reason on CPU.
        return {"error": f"child exited with code {proc.exitcode} (out of memory?)"}
    return queue.get()


def _trl_available():
    try:
        from trl.trainer.distillation_trainer import _chunked_divergence_loss  # noqa: F401
    except Exception as e:
        # Whatever breaks the import (a missing optional dependency included) just means no comparison.
        return f"{type(e).__name__}: {e}"
    return None


def _fmt_mem(result):
    return "error" if "error" in result else f"{result['peak'] / 2**20:,.0f}"


def _fmt_time(result):
    return "error" if "error" in result else f"{result['time']:.2f}"


def _ratio(result, dense, key):
    if "error" in result or "error" in dense or dense[key] <= 0:
        return "n/a"
    return f"{result[key] / dense[key]:.2f}"


def _parse_case(text):
    tokens, _, vocab = text.lower().partition("x")
    return int(tokens), int(vocab)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small cases for a smoke test")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--chunk-size", type=int, default=256, help="valid tokens per chunk of the chunked path")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per case (the fastest is reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-trl", action="store_true", help="skip the TRL comparison")
    parser.add_argument(
        "--cases",
        nargs="+",
        type=_parse_case,
        metavar="TOKENSxVOCAB",
        help="replace the default cases, e.g. 4096x32000",
    )
    args = parser.parse_args(argv)

    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cases = args.cases or (QUICK_CASES if args.quick else CASES)
    trl_error = "skipped (--no-trl)" if args.no_trl else _trl_available()
    methods = [m for m in METHODS if m != "trl" or trl_error is None]

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    memory_kind = "torch.cuda.max_memory_allocated" if args.device.startswith("cuda") else "peak RSS growth"
    print("# Distillation loss: dense vs chunked, forward + backward\n")
    print(f"- command: `python {' '.join(sys.argv)}`")
    threads = args.threads or torch.get_num_threads()
    print(f"- device: {args.device} ({device_name}), torch {torch.__version__}, {threads} threads")
    print(f"- dtype {args.dtype}, hidden {HIDDEN} (student and teacher), {LOSS_TYPE}, alpha={ALPHA},")
    print(f"  temperature={TEMPERATURE}, ~{MASKED_FRACTION:.0%} of labels masked, chunk_size={args.chunk_size}")
    # Other processes on the machine inflate the times (not the memory); the load average says how much.
    print(f"- load average (1, 5, 15 min) at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"- memory: {memory_kind} over the inputs, in MiB; time: best of {args.repeats} run(s), wall-clock seconds")
    print("- CPU-time ratio: the same ratio on process CPU time (all threads), less sensitive to other processes")
    if trl_error is not None:
        print(f"- trl: not measured ({trl_error})")
    else:
        import trl

        print(f"- trl {trl.__version__}: `_chunked_divergence_loss` (divergence only, no CE term)")
    print(flush=True)

    rows = []
    for tokens, vocab in cases:
        results = {m: _measure(m, tokens, vocab, args) for m in methods}
        for method, result in results.items():
            if "error" in result:
                print(f"  ({tokens}, {vocab}) {method}: {result['error']}", file=sys.stderr, flush=True)
        rows.append((tokens, vocab, results))

    print(
        "| tokens | vocab | dense MiB | chunked MiB | mem ratio | dense s | chunked s | time ratio | CPU-time ratio |"
    )
    print("|" + "|".join("---:" for _ in range(9)) + "|")
    for tokens, vocab, r in rows:
        d, c = r["dense"], r["chunked"]
        print(
            f"| {tokens} | {vocab} | {_fmt_mem(d)} | {_fmt_mem(c)} | {_ratio(c, d, 'peak')} | {_fmt_time(d)} | "
            f"{_fmt_time(c)} | {_ratio(c, d, 'time')} | {_ratio(c, d, 'cpu')} |"
        )
    if "trl" in methods:
        print("\n| tokens | vocab | trl MiB | mem trl/dense | trl s | time trl/dense | CPU-time trl/dense |")
        print("|" + "|".join("---:" for _ in range(7)) + "|")
        for tokens, vocab, r in rows:
            d, t = r["dense"], r["trl"]
            print(
                f"| {tokens} | {vocab} | {_fmt_mem(t)} | {_ratio(t, d, 'peak')} | {_fmt_time(t)} | "
                f"{_ratio(t, d, 'time')} | {_ratio(t, d, 'cpu')} |"
            )
    print(f"\n- load average at end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("\nLoss values (dense and chunked must agree; trl is a per-token mean without T**2):\n")
    for tokens, vocab, r in rows:
        values = ", ".join(f"{m} {res['loss']:.6g}" for m, res in r.items() if "error" not in res)
        n_valid = next((res["n_valid"] for res in r.values() if "n_valid" in res), "?")
        print(f"- ({tokens}, {vocab}), {n_valid} valid tokens: {values}")


if __name__ == "__main__":
    main()
